//! Reloads: re-read the config file, compile its rules beside the running
//! ones and swap them in only if all is well, keeping the state of
//! unchanged rules; and the watcher that asks for a reload when the config
//! or rule files change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use canaryd_rules::{Engine, ReloadReport};
use serde_json::{Value, json};

use crate::act::audit::Audit;
use crate::config::{Config, Loaded};
use crate::shared::Shared;

/// Re-reads the config at `path` and, if it is valid, moves every engine
/// onto its rules. Returns the configuration now in force and a report;
/// on failure nothing changed and the errors are returned. Timed, counted
/// and logged either way.
pub(super) async fn reload<'a>(
    path: Option<&Path>,
    running: &Arc<Loaded>,
    engines: impl Iterator<Item = &'a mut Engine>,
    audit: &Audit,
    shared: &Shared,
) -> Result<(Arc<Loaded>, Value), Vec<String>> {
    let started = Instant::now();
    let result = try_reload(path, running, engines, audit, shared).await;
    shared.metrics.record_reload(
        result.is_ok(),
        started.elapsed(),
        std::time::SystemTime::now(),
    );
    match &result {
        Ok((_, report)) => tracing::info!(%report, "configuration reloaded"),
        Err(errors) => {
            tracing::error!(?errors, "reload failed; the running configuration stays")
        }
    }
    result
}

async fn try_reload<'a>(
    path: Option<&Path>,
    running: &Arc<Loaded>,
    engines: impl Iterator<Item = &'a mut Engine>,
    audit: &Audit,
    shared: &Shared,
) -> Result<(Arc<Loaded>, Value), Vec<String>> {
    let path =
        path.ok_or_else(|| vec!["this canaryd was not started from a config file".to_string()])?;
    let loaded = Config::read(path)
        .and_then(|c| c.load_reusing(Some(running)))
        .map_err(|e| e.lines())?;
    let mut problems = loaded.problems();
    // A secret that cannot be read now would fail the next start: refuse it
    // while the running configuration still works.
    if let Some(http) = &loaded.config.http
        && let Err(e) = http.resolve_secrets()
    {
        problems.push(e);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let loaded = Arc::new(loaded);
    let mut report = ReloadReport::default();
    for engine in engines {
        let placeholder = Engine::new(
            loaded.rules.clone(),
            &loaded.vocabulary,
            loaded.engine_config(),
        );
        let old = std::mem::replace(engine, placeholder);
        let (new, r) = old.reload(loaded.rules.clone(), &loaded.vocabulary);
        *engine = new;
        report.dropped.extend(r.dropped);
        report.added = r.added;
        report.changed = r.changed;
        report.removed = r.removed;
        report.kept = r.kept;
    }
    // Alerts of removed or changed rules end quietly, with a record.
    for (rule, subject, phase) in &report.dropped {
        let record =
            json!({"kind": "ended_by_reload", "rule": rule, "subject": subject, "was": phase});
        audit.publish(rule, record).await;
    }
    shared.set_rules(&loaded.rules);
    let summary = json!({
        "added": report.added,
        "changed": report.changed,
        "removed": report.removed,
        "kept": report.kept,
        "ended": report.dropped.len(),
    });
    Ok((loaded, summary))
}

/// The files whose change asks for a reload: the config file and the rule
/// files, each as its directory (canonical) and file name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Watched {
    files: BTreeSet<(PathBuf, std::ffi::OsString)>,
}

impl Watched {
    /// The config file at `config` and the rule files it names.
    pub(super) fn new(config: &Path, rules: &[PathBuf]) -> Watched {
        let files = std::iter::once(config)
            .chain(rules.iter().map(PathBuf::as_path))
            .filter_map(|p| Some((canonical_dir(p)?, p.file_name()?.to_os_string())))
            .collect();
        Watched { files }
    }

    /// The directories to watch. Watching the directory, not the file,
    /// survives the symlink swap by which Kubernetes updates a mounted
    /// ConfigMap.
    pub(super) fn dirs(&self) -> BTreeSet<PathBuf> {
        self.files.iter().map(|(dir, _)| dir.clone()).collect()
    }

    /// Whether a change to `path` (in a watched directory) is one to reload
    /// for: a watched file, or the ConfigMap's `..data` link (and its
    /// `..data_tmp` stand-in) swapped under them. Anything else beside
    /// them, such as a log file, is not.
    pub(super) fn concerns(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (canonical_dir(path), path.file_name()) else {
            return false;
        };
        let configmap_swap = name
            .to_str()
            .is_some_and(|n| n == "..data" || n.starts_with("..data_tmp"));
        if configmap_swap {
            return self.files.iter().any(|(d, _)| *d == dir);
        }
        self.files.contains(&(dir, name.to_os_string()))
    }
}

/// The canonical directory of `path` (its parent; `.` when it has none).
fn canonical_dir(path: &Path) -> Option<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    parent.canonicalize().ok()
}

/// Watches the directories of the `watched` files, sending on `changed`
/// when one of them changes. `None` (logged) when watching is impossible:
/// SIGHUP and `POST /-/reload` still work.
pub(super) fn watch(
    watched: Watched,
    changed: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dirs = watched.dirs();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() || !event.paths.iter().any(|p| watched.concerns(p)) {
            return;
        }
        // A full channel already holds a pending change.
        let _ = changed.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP or /-/reload");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch directory; reload with SIGHUP or /-/reload");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on purpose

    use super::*;

    #[test]
    fn only_the_config_the_rules_and_a_configmap_swap_concern_a_reload() {
        let dir = std::env::temp_dir().join(format!("canaryd-watch-{}", std::process::id()));
        let rules_dir = dir.join("rules");
        std::fs::create_dir_all(&rules_dir).unwrap();
        let config = dir.join("canaryd.yaml");
        let rules = rules_dir.join("canary-alerts.yaml");
        let watched = Watched::new(&config, std::slice::from_ref(&rules));
        assert_eq!(watched.dirs().len(), 2);
        assert!(watched.concerns(&config));
        assert!(watched.concerns(&rules));
        assert!(watched.concerns(&dir.join("..data")));
        assert!(watched.concerns(&rules_dir.join("..data_tmp")));
        assert!(!watched.concerns(&dir.join("canaryd.log")));
        assert!(
            !watched.concerns(&dir.join("canary-alerts.yaml")),
            "a rule file's name in the wrong folder"
        );
        assert!(
            !watched.concerns(&rules_dir.join("canaryd.yaml")),
            "the config's name in the wrong folder"
        );
        assert!(!watched.concerns(&dir.join(".canaryd.yaml.swp")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
