//! A real Kafka-protocol broker for the tests: Tansu, run on 127.0.0.1 on
//! a free port, stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Where `tests/run` installs Tansu, unless `TANSU_BIN` says otherwise.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cache = std::env::var_os("CANARYD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/canaryd")))
        .unwrap_or_else(|| PathBuf::from("/tmp/canaryd-cache"));
    cache.join("tansu-0.6.0/bin/tansu")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A running broker.
pub struct Tansu {
    child: Child,
    port: u16,
    storage: String,
    /// Holds the broker log (and the sqlite database, if any).
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Tansu {
    /// Starts a broker with in-memory storage.
    pub fn start() -> Tansu {
        Tansu::start_with(|_| "memory://tansu/".to_string())
    }

    /// Starts a broker with sqlite storage, which a restart keeps.
    pub fn start_sqlite() -> Tansu {
        Tansu::start_with(|dir| format!("sqlite:///{}", dir.join("tansu.db").display()))
    }

    fn start_with(storage: impl FnOnce(&std::path::Path) -> String) -> Tansu {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let storage = storage(dir.path());
        let port = free_port();
        let log = dir.path().join("tansu.log");
        let child = spawn(port, &storage, &log);
        let broker = Tansu {
            child,
            port,
            storage,
            dir,
            log,
        };
        broker.wait_listening();
        broker
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and
    /// storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.path().join("tansu-restarted.log");
        self.child = spawn(self.port, &self.storage, &log);
        self.log = log;
        self.wait_listening();
    }

    /// Kills the broker; [`Tansu::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_listening(&self) {
        // Bounded wait for the listener.
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("tansu did not listen on {}: {}", self.port, self.log_text());
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates topics through rdkafka's admin client.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap_or_else(|e| panic!("admin client: {e}"));
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap_or_else(|e| panic!("create topics: {e}"));
        for r in results {
            if let Err((topic, e)) = r {
                panic!("create topic {topic}: {e}");
            }
        }
    }
}

fn spawn(port: u16, storage: &str, log: &std::path::Path) -> Child {
    let bin = tansu_bin();
    assert!(
        bin.exists(),
        "{} is missing: tests/run installs it",
        bin.display()
    );
    let url = format!("tcp://127.0.0.1:{port}");
    let log_file = std::fs::File::create(log).unwrap_or_else(|e| panic!("tansu log: {e}"));
    Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            storage,
        ])
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
