//! A throwaway PostgreSQL cluster for one test: Debian's server binaries, `initdb` into a temp
//! directory, `postgres` on a free loopback port with its socket in that directory, trust
//! authentication for the `postgres` superuser, and immediate shutdown plus removal on drop.
//! Never touches a system-wide cluster. Talk to it with [`Postgres::psql`] (the `psql` CLI).
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres` are run
//! as the `postgres` user through `setpriv` (which execs, so the child we hold *is* the postmaster)
//! and the temp directory is handed to that user.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running cluster; stopped and deleted when dropped.
pub struct Postgres {
    pub port: u16,
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    /// The postmaster; behind a lock so [`Postgres::shutdown`] works through an `Arc`.
    child: std::sync::Mutex<Option<Child>>,
}

/// Where the server binaries are: the newest /usr/lib/postgresql/N/bin, else $PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    match found {
        Some(p) => Path::new(&p).parent().unwrap().to_path_buf(),
        None => panic!(
            "PostgreSQL server binaries not found (apt-get install postgresql): \
             no /usr/lib/postgresql/*/bin and no `postgres` on PATH"
        ),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a server binary, run as `postgres` when we are root.
fn server_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Postgres {
    /// Initialises and starts a fresh cluster; panics with the server's log if it cannot.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let mut dir = tempfile::Builder::new()
            .prefix("audio-worker-pg-")
            .tempdir()
            .expect("temp dir");
        if as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot hand {} to the postgres user",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let init = server_command(&bin.join("initdb"), as_postgres)
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--no-sync",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );

        // A port taken between free_port() and bind is retried with another.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("postgres-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            if as_postgres {
                let _ = Command::new("chown")
                    .arg("postgres:")
                    .arg(&log_path)
                    .status();
            }
            let child = server_command(&bin.join("postgres"), as_postgres)
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "wal_level=logical",
                    "-c",
                    "max_connections=20",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start postgres");
            let mut pg = Postgres {
                port,
                bin: bin.clone(),
                dir,
                child: std::sync::Mutex::new(Some(child)),
            };
            if pg.wait_ready(Duration::from_secs(30)) {
                return pg;
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            pg.stop();
            dir = pg.take_dir();
        }
        panic!("postgres did not start:\n{last_log}");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.lock().unwrap().as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false; // exited: port taken or bad config
            }
            let ready = TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && Command::new("pg_isready")
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The postmaster's process id, while it runs (for tests that check it is stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// The temp directory holding the data directory, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The connection string for `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Runs `script` through `psql` against `dbname` (as the superuser `postgres`), stopping at
    /// the first error. `vars` become psql variables, for `:'name'` (a safely quoted literal) in
    /// the script. Returns stdout (unaligned, tuples only) or stderr on failure.
    pub fn psql(
        &self,
        dbname: &str,
        script: &str,
        vars: &[(&str, &str)],
    ) -> Result<String, String> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", dbname])
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        for (name, value) in vars {
            cmd.arg("-v").arg(format!("{name}={value}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .expect("write to psql");
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().expect("psql output");
        if status.success() {
            Ok(String::from_utf8_lossy(&stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&stderr).into_owned())
        }
    }

    /// [`Postgres::psql`] that must succeed.
    pub fn sql(&self, dbname: &str, script: &str, vars: &[(&str, &str)]) -> String {
        self.psql(dbname, script, vars)
            .unwrap_or_else(|e| panic!("psql failed: {e}\nscript:\n{script}"))
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) {
        self.sql("postgres", &format!("create database \"{name}\";"), &[]);
    }

    /// Runs a SQL file (a migration) against `dbname`.
    pub fn apply_file(&self, dbname: &str, file: &Path) -> Result<String, String> {
        let script =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        self.psql(dbname, &script, &[])
    }

    /// Stops the postmaster and deletes the cluster's files now, whoever else holds this
    /// cluster (a mock server's responder may keep an `Arc` until its task winds down, which at
    /// the end of a test binary can be after the process has exited).
    pub fn shutdown(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.dir.path());
    }

    fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // SIGQUIT: immediate shutdown of the postmaster and its backends (we run as root or as
        // the same user, so we may signal it; setpriv exec'd, so the child is the postmaster).
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}
