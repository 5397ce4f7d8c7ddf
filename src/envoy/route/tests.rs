//! Table tests: YAML in, RouteConfiguration protos out.
