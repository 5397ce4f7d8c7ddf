//! The bench's mesh through rudder's real pipeline: Services and EndpointSlices, built into a `Snapshot` (as the
//! snapshot builder does after a change, reusing the services whose endpoints did not move) and translated by
//! the real `Generator` (per-proxy view keys, encoding once per view). `--generator static` instead serves
//! pre-encoded resources, which measures the ADS server alone.

use std::collections::HashMap;
use std::sync::Arc;

use rudder::config::store::Changes;
use rudder::config::{Object, ObjectKey};
use rudder::envoy::Generator;
use rudder::model::Snapshot;
use rudder::test_helpers::mesh::objects_from_yaml;

use super::SERVICES;

/// The objects of the mesh, by key, in a stable order.
pub struct RealMesh {
    objects: Vec<Object>,
    index: HashMap<ObjectKey, usize>,
    /// The generator last published.
    last: Option<Arc<Generator>>,
    /// What changed since then (as the store reports it to the snapshot builder).
    changes: Changes,
}

fn service(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
    )
}

/// The endpoints of service `i` at `epoch` (the bench's `eps`): three pods, a port that moves with the epoch.
fn slice(name: &str, ns: &str, i: usize, epoch: u16) -> String {
    let endpoints: String = (1..=3u8)
        .map(|k| {
            format!(
                "  - {{addresses: [\"10.{}.{}.{k}\"], conditions: {{ready: true}}}}\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints:\n{endpoints}---\n",
        8000 + epoch
    )
}

impl RealMesh {
    /// The bench's 1,000 services (`svc-<i>` in `ns-<i % 20>`, port 80), three endpoints each.
    pub fn new() -> Self {
        let yaml: String = (0..SERVICES)
            .map(|i| {
                let (name, ns) = (format!("svc-{i}"), format!("ns-{}", i % 20));
                service(&name, &ns) + &slice(&name, &ns, i, 0)
            })
            .collect();
        let mut mesh = RealMesh {
            objects: Vec::new(),
            index: HashMap::new(),
            last: None,
            changes: Changes::default(),
        };
        mesh.apply(&yaml);
        mesh
    }

    /// Adds or replaces the objects in `yaml`.
    fn apply(&mut self, yaml: &str) {
        for obj in objects_from_yaml(yaml) {
            self.changes.kinds.insert(obj.kind());
            self.changes.keys.insert(obj.key());
            match self.index.get(&obj.key()) {
                Some(&at) => self.objects[at] = obj,
                None => {
                    self.index.insert(obj.key(), self.objects.len());
                    self.objects.push(obj);
                }
            }
        }
    }

    /// Config change: a new service (a new cluster and its endpoints, a new virtual host in route "80").
    pub fn add_service(&mut self, epoch: usize) {
        let (name, ns) = (format!("svc-new-{epoch}"), "ns-0");
        self.apply(&(service(&name, ns) + &slice(&name, ns, SERVICES + epoch, 0)));
    }

    /// Endpoint change: service `i` moves to the port of `epoch`.
    pub fn set_endpoints(&mut self, i: usize, epoch: u16) {
        let (name, ns) = (format!("svc-{i}"), format!("ns-{}", i % 20));
        self.apply(&slice(&name, &ns, i, epoch));
    }

    /// A generator over a snapshot of the mesh now, built as the snapshot builder builds one and following
    /// the previous generator, as the app does.
    pub fn generator(&mut self, version: u64) -> Arc<Generator> {
        let changes = std::mem::take(&mut self.changes);
        let earlier = self
            .last
            .as_ref()
            .map(|g| (g.snapshot().as_ref(), &changes));
        let mut g = Generator::new(Arc::new(Snapshot::build_after(
            earlier,
            version,
            &self.objects,
            Vec::new(),
        )));
        if let Some(previous) = &self.last {
            g = g.following(previous);
        }
        let g = Arc::new(g);
        self.last = Some(g.clone());
        g
    }
}
