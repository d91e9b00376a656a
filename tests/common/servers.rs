//! Real servers for integration tests, each on a free loopback port with its own temp directory,
//! killed when the handle drops. Never a system-wide instance.
//!
//! - [`RedisServer`]: `redis-server` (Debian package `redis-server`).
//! - PostgreSQL: `tests/common/postgres.rs`. Another server: build it from [`ServerProcess`],
//!   [`free_port`] and [`wait_until`], as [`RedisServer`] is.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the OS picks it; a tiny race remains, so starters retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// Polls `ready` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `program` can be found on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A child process that is killed (SIGKILL) and reaped when dropped, with its output in a log file.
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ServerProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{name}: log {}: {e}", log.display()));
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        ServerProcess {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, like a crash or an OOM kill: no shutdown hooks, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The tail of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// How to run a test Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisOptions {
    /// Append-only file on (data survives a kill and restart); off means purely in memory.
    pub appendonly: bool,
    /// With `appendonly`: fsync every write (`appendfsync always`), so a SIGKILL loses nothing
    /// acknowledged; otherwise Redis' default, up to a second of writes.
    pub fsync_always: bool,
}

/// A private `redis-server` on 127.0.0.1, killed on drop. Its data directory is a temp dir that
/// outlives restarts, so [`RedisServer::restart`] with `appendonly` brings the data back.
pub struct RedisServer {
    port: u16,
    opts: RedisOptions,
    dir: tempfile::TempDir,
    process: Option<ServerProcess>,
}

impl RedisServer {
    /// An in-memory Redis (no RDB snapshots, no AOF).
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> RedisServer {
        assert!(
            have("redis-server"),
            "redis-server is not installed (Debian: apt-get install -y redis-server)"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("test-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut last = String::new();
        // A free port can be taken by someone else before redis binds it: try a few.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                opts,
                dir,
                process: None,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    dir = server.take_dir();
                }
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn take_dir(self) -> tempfile::TempDir {
        let RedisServer { dir, process, .. } = self;
        drop(process);
        dir
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "yes", "--databases", "1"])
            .args([
                "--appendonly",
                if self.opts.appendonly { "yes" } else { "no" },
            ])
            .args([
                "--appendfsync",
                if self.opts.fsync_always {
                    "always"
                } else {
                    "everysec"
                },
            ])
            .arg("--dir")
            .arg(self.dir.path());
        let mut process = ServerProcess::spawn("redis-server", cmd, &self.dir.path().join("log"));
        let port = self.port;
        let ready = wait_until(Duration::from_secs(10), || {
            process.exited() || redis_ping(port)
        });
        if !ready || process.exited() {
            let tail = process.log_tail();
            process.kill();
            return Err(format!("port {port}: {tail}"));
        }
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL the server (a crash: nothing flushed beyond what the AOF already has).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        assert!(
            wait_until(Duration::from_secs(5), || !redis_ping(self.port)),
            "redis on {} still answers after the kill",
            self.port
        );
    }

    /// Starts the server again on the same port and directory (kills it first if running).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.launch() {
            panic!("redis-server did not come back: {e}");
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| !p.exited())
    }
}

/// A private `redis-server` that speaks only TLS (`--port 0 --tls-port P`), with a CA and a server
/// certificate for `localhost`/127.0.0.1 made for it by the openssl CLI. Killed on drop.
pub struct TlsRedisServer {
    pub port: u16,
    /// The CA's certificate (PEM): what REDIS_TLS_CA_FILE or SSL_CERT_FILE point at.
    pub ca_file: PathBuf,
    dir: tempfile::TempDir,
    process: ServerProcess,
}

impl TlsRedisServer {
    pub fn start() -> TlsRedisServer {
        assert!(
            have("openssl"),
            "the openssl CLI is needed to make test certificates"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=audio-worker test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                // `localhost` may resolve to ::1 first; "-" makes that address optional.
                .args([
                    "--bind",
                    "127.0.0.1 -::1",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                ])
                .args(["--appendonly", "no", "--databases", "1"])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem"))
                .args(["--tls-auth-clients", "no"])
                .arg("--dir")
                .arg(d);
            let mut process = ServerProcess::spawn("redis-server (tls)", cmd, &d.join("log"));
            let up = wait_until(Duration::from_secs(10), || {
                process.exited()
                    || std::fs::read_to_string(d.join("log"))
                        .is_ok_and(|l| l.contains("Ready to accept connections"))
            });
            if up && !process.exited() {
                return TlsRedisServer {
                    port,
                    ca_file: d.join("ca.pem"),
                    dir,
                    process,
                };
            }
            last = process.log_tail();
            process.kill();
        }
        panic!("redis-server with TLS did not start: {last}");
    }

    /// `rediss://localhost:PORT/`
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// True when a Redis on `port` answers PING with PONG (not -LOADING while it reads its AOF).
pub fn redis_ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------
//
// Lives in `tests/common/postgres.rs` (`common::postgres::Postgres`, written alongside this
// file): same contract (initdb into a temp dir, a free loopback port, killed and removed on
// drop). A later server belongs here, built from `ServerProcess`, `free_port` and `wait_until`.
