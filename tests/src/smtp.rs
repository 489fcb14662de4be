//! Real SMTP servers for the email connector's tests, from Debian's
//! `python3-aiosmtpd` (aiosmtpd 1.4.x on bookworm):
//!
//! - [`Smtpd::start`]: `python3 -m aiosmtpd -n -l 127.0.0.1:PORT -c
//!   aiosmtpd.handlers.Mailbox DIR`, which delivers every message it takes
//!   into the Maildir `DIR`; [`Smtpd::messages`] reads them back.
//! - [`Smtpd::start_refusing_auth`]: `tests/support/smtpd_auth.py`, which
//!   offers AUTH over plain text and refuses every login with `535 5.7.8
//!   Authentication credentials invalid`.
//!
//! Each runs on 127.0.0.1 on a free port and is killed when dropped. The
//! Python used is `$CANARYD_PYTHON`, else `/usr/bin/python3` (where Debian's
//! package installs aiosmtpd; a `python3` earlier on `PATH`, from pyenv for
//! example, may not have it), else `python3`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// The Python interpreter that runs aiosmtpd.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CANARYD_PYTHON") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        return debian.to_path_buf();
    }
    PathBuf::from("python3")
}

/// Whether [`python`] can import aiosmtpd.
pub fn aiosmtpd_available() -> bool {
    Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One delivered message, as stored in the Maildir.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The message as stored.
    pub raw: String,
    /// Header fields in order, unfolded: (name, value).
    pub headers: Vec<(String, String)>,
    /// The body, with quoted-printable decoded.
    pub body: String,
}

impl Mail {
    /// Parses a stored message.
    pub fn parse(raw: &str) -> Mail {
        let normalised = raw.replace("\r\n", "\n");
        let (head, body) = normalised
            .split_once("\n\n")
            .unwrap_or((normalised.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let qp = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("Content-Transfer-Encoding")
                && v.eq_ignore_ascii_case("quoted-printable")
        });
        let body = if qp {
            decode_quoted_printable(body)
        } else {
            body.to_string()
        };
        Mail {
            raw: raw.to_string(),
            headers,
            body,
        }
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Subject` header.
    pub fn subject(&self) -> &str {
        self.header("Subject").unwrap_or("")
    }

    /// The envelope recipients, as aiosmtpd's Mailbox handler records them
    /// in `X-RcptTo`.
    pub fn envelope_recipients(&self) -> Vec<String> {
        self.header("X-RcptTo")
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Decodes quoted-printable text (RFC 2045): `=XX` bytes and `=` soft line
/// breaks.
pub fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running aiosmtpd; killed when dropped.
pub struct Smtpd {
    child: Child,
    port: u16,
    maildir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Smtpd {
    /// Starts aiosmtpd with the Mailbox handler: every message it takes is
    /// delivered to a Maildir. Panics (with how to install it) if aiosmtpd
    /// is missing, and with its log if it does not listen in time.
    pub fn start() -> Smtpd {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("smtpd: tempdir: {e}"));
        let maildir = dir.path().join("maildir");
        let port = crate::tansu::free_port();
        let listen = format!("127.0.0.1:{port}");
        let maildir_arg = maildir.display().to_string();
        Smtpd::spawn(
            dir,
            maildir,
            port,
            &[
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &listen,
                "-c",
                "aiosmtpd.handlers.Mailbox",
                &maildir_arg,
            ],
        )
    }

    /// Starts `tests/support/smtpd_auth.py`: AUTH is offered without TLS and
    /// every login is refused with 535.
    pub fn start_refusing_auth() -> Smtpd {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("smtpd: tempdir: {e}"));
        let maildir = dir.path().join("maildir");
        let port = crate::tansu::free_port();
        let script = crate::repo("tests/support/smtpd_auth.py");
        let script = script.display().to_string();
        let port_arg = port.to_string();
        Smtpd::spawn(
            dir,
            maildir,
            port,
            &[&script, "--host", "127.0.0.1", "--port", &port_arg],
        )
    }

    fn spawn(dir: tempfile::TempDir, maildir: PathBuf, port: u16, args: &[&str]) -> Smtpd {
        assert!(
            aiosmtpd_available(),
            "{} cannot import aiosmtpd: install Debian's python3-aiosmtpd (apt-get install -y python3-aiosmtpd) or set CANARYD_PYTHON",
            python().display()
        );
        let log = dir.path().join("smtpd.log");
        let file =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("smtpd: {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("smtpd: log: {e}"));
        let child = Command::new(python())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("smtpd: cannot start {}: {e}", python().display()));
        let mut smtpd = Smtpd {
            child,
            port,
            maildir,
            log,
            _dir: dir,
        };
        smtpd.wait_listening();
        smtpd
    }

    fn wait_listening(&mut self) {
        let start = Instant::now();
        while start.elapsed() < START_LIMIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "smtpd exited ({status}) before listening on port {}:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "smtpd did not listen on 127.0.0.1:{} within {START_LIMIT:?}:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Maildir messages are delivered to.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// What the server printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every delivered message, oldest first (by file name, which starts
    /// with the delivery time).
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|raw| Mail::parse(&raw))
            .collect()
    }

    /// Waits (bounded) until at least `count` messages are delivered; the
    /// messages there are then.
    pub fn wait_for_messages(&self, count: usize, limit: Duration) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= count || start.elapsed() >= limit {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
