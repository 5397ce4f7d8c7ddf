//! The one place components are built and wired together: store, sources, snapshot builder (and, as they land,
//! the xDS and debug servers).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::source::file::FileSource;
use crate::config::store::Store;
use crate::model::builder::{self, Built, Debounce};

/// Settings for `rudder discovery`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// Config directory (the file source); `None` when only Kubernetes is used.
    pub config_dir: Option<PathBuf>,
    pub debounce: Debounce,
    /// How long the file watcher lets a burst of writes settle before reloading.
    pub file_settle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config_dir: None,
            debounce: Debounce::default(),
            file_settle: Duration::from_millis(50),
        }
    }
}

/// A running control plane.
pub struct Bound {
    pub store: Arc<Store>,
    /// The latest snapshot; every consumer subscribes here.
    pub snapshots: watch::Receiver<Arc<Built>>,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

/// Loads the sources, builds the first snapshot and starts the background tasks.
pub async fn build(cfg: Config) -> anyhow::Result<Bound> {
    let store = Arc::new(Store::new());
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(dir) = &cfg.config_dir {
        let mut source = FileSource::new(dir, store.clone());
        let loaded = source.load_all().context("file source starts")?;
        tracing::info!(
            dir = %dir.display(),
            files = loaded.files,
            objects = loaded.objects,
            errors = loaded.errors,
            warnings = loaded.warnings,
            skipped = loaded.skipped,
            "loaded config directory"
        );
        let settle = cfg.file_settle;
        tasks.spawn(async move { source.watch(settle).await.context("file watcher") });
    }
    let first = builder::build_now(&store, 1);
    tracing::info!(
        build_ms = first.build_time.as_millis() as u64,
        "{}",
        first.snapshot.summary()
    );
    let (tx, rx) = watch::channel(Arc::new(first));
    let debounce = cfg.debounce;
    let s = store.clone();
    tasks.spawn(async move {
        builder::run(s, debounce, tx).await;
        Ok(())
    });
    Ok(Bound {
        store,
        snapshots: rx,
        tasks,
    })
}

impl Bound {
    /// Runs until a task fails or the process is interrupted.
    pub async fn run(mut self) -> anyhow::Result<()> {
        tokio::select! {
            res = self.tasks.join_next() => match res {
                Some(Ok(Ok(()))) | None => Ok(()),
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(e).context("task panicked"),
            },
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted, shutting down");
                Ok(())
            }
        }
    }
}
