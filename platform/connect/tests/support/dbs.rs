//! Throwaway database servers for tests: a PostgreSQL cluster (`initdb` + `pg_ctl`, `wal_level=logical`,
//! password authentication) and a MariaDB server (`mariadb-install-db` + `mariadbd`), each in a temp
//! directory on a free loopback port, torn down (SIGKILL, then the directory) when dropped. The
//! system's own running servers are never used. `tests/dbs.py` does the same for the Python suite.
//!
//! The server binaries come from Debian's `postgresql` and `mariadb-server` packages (`test.sh`
//! installs them). PostgreSQL refuses to run as root, so as root its programs run as `nobody`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "sluice";
pub const PASSWORD: &str = "s3cret-pw";
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The first of `candidates` that exists, else a name for PATH.
fn find(candidates: &[&str], fallback: &str) -> PathBuf {
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(fallback))
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin").join(name)).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e} (run ./test.sh once to install the database servers)"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A command run as `nobody` when we are root (PostgreSQL's programs refuse root).
fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_nobody(path: &Path) {
    if is_root() {
        run(Command::new("chown").args(["-R", "nobody"]).arg(path), "chown");
    }
}

fn wait_for_port(port: u16, child: &mut Option<Child>, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("the server exited ({status}) before listening:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the server did not listen on {port}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    options: String,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// A fresh cluster with the superuser `sluice` / `s3cret-pw` and password (scram) authentication.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let data = dir.path().join("pgdata");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        give_to_nobody(dir.path());
        run(
            as_postgres_user(&postgres_bin("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let port = free_port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=logical -c fsync=off",
            dir.path().display()
        );
        let postgres = Postgres { port, data, options, _dir: dir };
        postgres.start_again();
        postgres
    }

    fn log(&self) -> PathBuf {
        self._dir.path().join("postgres.log")
    }

    /// Starts the server (again, after [`Postgres::stop`]) on the same port and data.
    pub fn start_again(&self) {
        run(
            as_postgres_user(&postgres_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-o", &self.options, "-l"])
                .arg(self.log())
                .arg("start"),
            "pg_ctl start",
        );
        wait_for_port(self.port, &mut None, &self.log());
    }

    /// Stops the server at once (`-m immediate`: connections are cut, as in a crash).
    pub fn stop(&self) {
        run(as_postgres_user(&postgres_bin("pg_ctl")).arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]), "pg_ctl stop");
    }

    pub fn url(&self) -> String {
        format!("postgres://127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres_user(&postgres_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub struct MariaDb {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    /// A fresh server with the user `sluice` / `s3cret-pw` (all privileges) and a database `test`.
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("mariadb.log");
        let user = if is_root() { "--user=root" } else { "--no-defaults" };
        let install = find(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"], "mariadb-install-db");
        run(
            Command::new(install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg(user),
            "mariadb-install-db",
        );
        let port = free_port();
        let server = find(&["/usr/sbin/mariadbd", "/usr/sbin/mysqld"], "mariadbd");
        let mut command = Command::new(server);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"])
            .arg(format!("--pid-file={}", dir.path().join("mariadb.pid").display()))
            .arg(format!("--log-error={}", log.display()));
        if is_root() {
            command.arg("--user=root");
        }
        let mut child = Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting mariadbd"));
        wait_for_port(port, &mut child, &log);
        let client = find(&["/usr/bin/mariadb", "/usr/bin/mysql"], "mariadb");
        let setup = format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%'; CREATE DATABASE test CHARACTER SET utf8mb4;"
        );
        run(
            Command::new(client).arg("--no-defaults").arg(format!("--socket={}", socket.display())).args(["-u", "root", "-e", &setup]),
            "creating the test user",
        );
        MariaDb { port, child, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("mysql://127.0.0.1:{}/test", self.port)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
