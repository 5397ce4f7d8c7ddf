//! Helpers shared by unit tests, integration tests and the conformance harness (feature `testing`).
