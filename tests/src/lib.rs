//! Helpers for the black-box tests in `tests/tests/`: they run the real
//! `canaryd` binary, as a user would, against real servers on 127.0.0.1.
//!
//! # Layout
//!
//! - this file: the binary ([`canaryd`], [`Daemon`] for `canaryd run`),
//!   paths in the repository, golden files, pages rendered in Chromium.
//! - [`tansu`]: a real Kafka-protocol broker (Tansu), on a free port.
//! - [`kafka`]: producing test events and reading canaryd's output topics.
//! - [`kube_fixture`]: a fake Kubernetes API server that kube-rs talks to
//!   through a kubeconfig (GET, merge and apply PATCH, conflicts, errors).
//! - [`receivers`]: local PagerDuty, Slack and webhook receivers that check
//!   each API's schema.
//! - [`smtp`]: real SMTP servers from Debian's aiosmtpd.
//! - [`local_http`]: the small HTTP server the fixtures above are built on.
//! - [`modgraph`]: a crate's module graph from its sources, for the test
//!   that forbids import cycles.
#![forbid(unsafe_code)]

pub mod kafka;
pub mod kube_fixture;
pub mod local_http;
pub mod modgraph;
pub mod receivers;
pub mod smtp;
pub mod tansu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A path under the workspace root.
pub fn repo(path: &str) -> PathBuf {
    root().join(path)
}

/// The `canaryd` binary built for this profile. `tests/run` builds it
/// before running the suite.
pub fn canaryd_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/canaryd
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("canaryd"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p canaryd` (tests/run does)",
        bin.display()
    );
    bin
}

/// Runs `canaryd` with `args` from the workspace root.
pub fn canaryd(args: &[&str]) -> Output {
    Command::new(canaryd_bin())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run canaryd: {e}"))
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Compares `actual` with a golden file; `UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(name: &str, actual: &str) {
    let path = repo("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
    if expected != actual {
        let diff = similar_lines(&expected, actual);
        panic!(
            "{} differs from the output (UPDATE_GOLDEN=1 to accept):\n{diff}",
            path.display()
        );
    }
}

fn similar_lines(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                out.push_str(&format!(
                    "line {}:\n  - {}\n  + {}\n",
                    i + 1,
                    x.unwrap_or(&""),
                    y.unwrap_or(&"")
                ));
            }
        }
    }
    out
}

/// `log` without its colours (ANSI escape sequences).
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending at a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The partitions of `topic` a log line names: a list
/// `[("topic", 0), ...]`, or else `topic="topic" partition=0`.
pub fn partitions_of(line: &str, topic: &str) -> Vec<i32> {
    let tuple = format!("(\"{topic}\", ");
    let listed: Vec<i32> = line
        .split(tuple.as_str())
        .skip(1)
        .filter_map(|rest| rest.split(')').next()?.parse().ok())
        .collect();
    if !listed.is_empty() || !line.contains(&format!("topic=\"{topic}\"")) {
        return listed;
    }
    line.split("partition=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .into_iter()
        .collect()
}

/// A `canaryd` process running in the background, killed when dropped.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `canaryd` with `args`, logging at info level to `log`.
    pub fn spawn(args: &[&str], log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = Command::new(canaryd_bin())
            .args(args)
            .current_dir(root())
            .env("RUST_LOG", "canaryd=info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start canaryd: {e}"));
        Daemon { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The partitions of `topic` the daemon owns now, as its log tells:
    /// assignments and revocations in order (cooperative assignment logs
    /// only what changes).
    pub fn owned(&self, topic: &str) -> std::collections::BTreeSet<i32> {
        let mut owned = std::collections::BTreeSet::new();
        for line in plain(&self.log_text()).lines() {
            let assigned = line.contains("partitions assigned");
            if assigned || line.contains("partitions revoked") {
                for partition in partitions_of(line, topic) {
                    if assigned {
                        owned.insert(partition);
                    } else {
                        owned.remove(&partition);
                    }
                }
            }
        }
        owned
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "kill -{signal} failed"
        );
    }

    /// Waits (bounded) for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders a page in Debian's headless Chromium, scripts run, and returns the DOM.
pub fn render_in_browser(url: &str) -> String {
    let out = chromium(&["--dump-dom", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Saves a screenshot of `url`, as headless Chromium renders it once its
/// scripts have run, to `target/test-artefacts/{name}.png`; returns the path.
pub fn screenshot_in_browser(url: &str, name: &str) -> PathBuf {
    let dir = root().join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    chromium(&[
        "--window-size=1280,1600",
        "--hide-scrollbars",
        &format!("--screenshot={}", path.display()),
        url,
    ]);
    path
}

/// Runs headless Chromium with a fresh profile and no network besides
/// loopback's, with `args`.
fn chromium(args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary profile: {e}"));
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("chromium is installed by tests/run: {e}"))
}
