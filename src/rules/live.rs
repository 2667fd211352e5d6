//! The rule set in force, replaceable while the service runs. A reload loads and validates
//! the whole set; only a valid set replaces the old one, atomically. Work in flight keeps the
//! set it started with (it holds an `Arc`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{LoadError, RuleSet};

/// What the last reload did, for `/readyz`.
#[derive(Clone, Debug)]
pub struct ReloadStatus {
    pub version: String,
    pub rules: usize,
    pub files: usize,
    pub loaded_at: SystemTime,
    /// The errors of the last reload that failed, until a valid set loads.
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct LiveRules {
    path: PathBuf,
    current: RwLock<Arc<RuleSet>>,
    status: RwLock<ReloadStatus>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The version of the set in force, sent on each reload that replaces it.
    replaced: tokio::sync::watch::Sender<String>,
}

impl LiveRules {
    pub fn new(
        path: PathBuf,
        initial: Arc<RuleSet>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> LiveRules {
        let status = ReloadStatus {
            version: initial.version().to_owned(),
            rules: initial.rules().len(),
            files: initial.files().len(),
            loaded_at: SystemTime::now(),
            last_error: None,
        };
        let (replaced, _) = tokio::sync::watch::channel(initial.version().to_owned());
        LiveRules {
            path,
            current: RwLock::new(initial),
            status: RwLock::new(status),
            metrics,
            replaced,
        }
    }

    /// The rule file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rule set in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Told the new version each time a reload replaces the set (not for an unchanged or
    /// rejected one).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<String> {
        self.replaced.subscribe()
    }

    pub fn status(&self) -> ReloadStatus {
        match self.status.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the files again. A valid set replaces the current one; an invalid one leaves it
    /// in force and is reported (every error, with file:line:column).
    pub fn reload(&self) -> Result<Arc<RuleSet>, LoadError> {
        let result = self.load();
        let outcome = match &result {
            Ok(false) => "unchanged",
            Ok(true) => "applied",
            Err(_) => "rejected",
        };
        self.metrics
            .rule_reloads
            .with_label_values(&[outcome])
            .inc();
        result.map(|_| self.current())
    }

    /// [`LiveRules::reload`]; true when a new set replaced the old one.
    fn load(&self) -> Result<bool, LoadError> {
        match RuleSet::load(&self.path) {
            Ok(set) if set.version() == self.current().version() => {
                if let Ok(mut status) = self.status.write() {
                    status.last_error = None;
                }
                Ok(false)
            }
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::clone(&set);
                }
                if let Ok(mut status) = self.status.write() {
                    *status = ReloadStatus {
                        version: set.version().to_owned(),
                        rules: set.rules().len(),
                        files: set.files().len(),
                        loaded_at: SystemTime::now(),
                        last_error: None,
                    };
                }
                tracing::info!(
                    version = set.version(),
                    rules = set.rules().len(),
                    "rules reloaded"
                );
                self.replaced.send_replace(set.version().to_owned());
                Ok(true)
            }
            Err(e) => {
                for d in e.errors() {
                    tracing::error!(diagnostic = %d, "rules not reloaded; the previous rules stay in force");
                }
                if let Ok(mut status) = self.status.write() {
                    status.last_error = Some(e.to_string());
                }
                Err(e)
            }
        }
    }
}

/// How long the files must stay quiet before a change is loaded: editors and ConfigMap
/// updates touch several files in a row.
const QUIET: Duration = Duration::from_millis(250);

impl LiveRules {
    /// Watches the rules for changes and reloads after they settle. The directory is watched
    /// (for a single file, its directory), so files replaced by a rename, as editors and
    /// Kubernetes ConfigMaps do, are seen too. Keep the returned watcher alive.
    pub fn watch(self: &Arc<Self>) -> Result<RecommendedWatcher, notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        let dir = if self.path.is_dir() {
            self.path.clone()
        } else {
            self.path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let rules = Arc::clone(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Wait until nothing has changed for QUIET.
                while let Ok(Some(())) = tokio::time::timeout(QUIET, rx.recv()).await {}
                let rules = Arc::clone(&rules);
                let _ = tokio::task::spawn_blocking(move || rules.reload()).await;
            }
        });
        Ok(watcher)
    }
}
