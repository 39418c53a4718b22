//! Helpers shared by the integration tests: the default local config, unique names, a private
//! Apache Kafka broker, an in-process registry, paths of the stock clients.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cutover::config::Config;
use cutover::registry::store::Store;
use cutover::registry::Compatibility;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

/// The built-in local-stack config (what `make up` serves), without env overrides.
pub fn local_config() -> Config {
    Config::load_with_env(None, Vec::<(String, String)>::new()).expect("built-in config")
}

/// A name unique across test processes and runs: `<prefix>_<pid>_<time>_<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    format!(
        "{prefix}_{}_{t}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python interpreter of the venv that deploy/local/bootstrap.sh creates.
pub fn python() -> PathBuf {
    let p = std::env::var_os("CUTOVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".local/venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run `make up` (deploy/local/bootstrap.sh creates the venv)",
        p.display()
    );
    p
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// An Apache Kafka (single KRaft node) of the test's own, on free ports, with its data in a
/// temp dir, so a test can kill and restart it without disturbing the shared stack. Started by
/// deploy/local/kafka/run.sh, which execs the JVM: the child is the broker itself.
pub struct PrivateBroker {
    pub port: u16,
    controller_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra server properties (appended) and storage-format arguments, see run.sh.
    extra: Option<(PathBuf, String)>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let mut b = PrivateBroker::unstarted();
        b.spawn();
        b
    }

    fn unstarted() -> PrivateBroker {
        PrivateBroker {
            port: free_port(),
            controller_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: None,
        }
    }

    /// A broker with more listeners or settings: `properties(port, controller_port)` is
    /// appended to its server.properties (a later key wins), `format_args` are passed to the
    /// one-time storage format (`--add-scram ...`).
    pub fn start_with(properties: impl Fn(u16, u16) -> String, format_args: &str) -> PrivateBroker {
        let mut b = PrivateBroker::unstarted();
        let path = b.dir.path().join("extra.properties");
        std::fs::write(&path, properties(b.port, b.controller_port)).unwrap();
        b.extra = Some((path, format_args.to_string()));
        b.spawn();
        b
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start the broker (again) on the same ports and data; returns once its listener is open
    /// (Kafka opens the client port only after the broker has started).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .unwrap();
        let mut cmd = Command::new("bash");
        if let Some((props, format_args)) = &self.extra {
            cmd.env("CUTOVER_KAFKA_EXTRA_PROPERTIES", props)
                .env("CUTOVER_KAFKA_FORMAT_ARGS", format_args);
        }
        let child = cmd
            .arg(root().join("deploy/local/kafka/run.sh"))
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .env("CUTOVER_KAFKA_HEAP", "512m")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn deploy/local/kafka/run.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !port_open(self.port) {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "private broker exited with {st}: {}",
                    std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "private broker did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL the broker (the harshest stop) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (Kafka's clean shutdown) with a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                    self.child = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An embedded registry served in-process on a free port, over a store in `dir`.
pub struct TestRegistry {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRegistry {
    pub async fn start(dir: &Path) -> TestRegistry {
        Self::start_with(dir, cutover::registry::access::Access::open()).await
    }

    /// As [`TestRegistry::start`], behind `access` (credentials, limits).
    pub async fn start_with(dir: &Path, access: cutover::registry::access::Access) -> TestRegistry {
        let store = Arc::new(Store::open(dir, Compatibility::Backward).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            cutover::registry::server::serve(listener, store, access, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestRegistry {
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

pub fn pg_bindir() -> PathBuf {
    for d in ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"] {
        if Path::new(d).join("initdb").exists() {
            return PathBuf::from(d);
        }
    }
    let out = Command::new("pg_config").arg("--bindir").output().unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Run a PostgreSQL server binary as `postgres` when we are root (initdb refuses root).
fn pg_command(bin: &str) -> Command {
    let path = pg_bindir().join(bin);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, a free port, trust auth), so a
/// test can restart it or run it with other settings without disturbing the shared stack.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `settings` are `-c` options, e.g. `["wal_level=logical"]`.
    pub fn start(settings: &[&str]) -> PrivatePostgres {
        PrivatePostgres::start_with(settings, None, &[])
    }

    /// [`PrivatePostgres::start`] with `hba` as the whole pg_hba.conf (when given) and `files`
    /// (name, contents) written into the data directory first, owned by the server's user
    /// with mode 0600 (a server key must be).
    pub fn start_with(
        settings: &[&str],
        hba: Option<&str>,
        files: &[(&str, &[u8])],
    ) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\nfsync = off\nmax_wal_senders = 4\nmax_replication_slots = 4\n",
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let auto = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&auto).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&auto, existing).unwrap();
        let mut written: Vec<PathBuf> = files.iter().map(|(n, _)| data.join(n)).collect();
        for (name, body) in files {
            std::fs::write(data.join(name), body).unwrap();
        }
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
            written.push(data.join("pg_hba.conf"));
        }
        for path in &written {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let ok = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(path)
                    .status()
                    .unwrap();
                assert!(ok.success());
            }
        }
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
        };
        pg.ctl_start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ctl_start(&self) {
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("pg.log"))
            .args([
                "-o",
                &format!("-p {}", self.port),
                "-w",
                "-t",
                "60",
                "start",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    fn ctl_stop(&self, mode: &str) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output();
    }

    /// Immediate stop (like a crash) and start again on the same port.
    pub fn restart(&self) {
        self.ctl_stop("immediate");
        self.ctl_start();
    }

    /// A libpq URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl_stop("immediate");
    }
}

/// Route library logs to the test's output (shown on failure); filter with RUST_LOG.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A child process killed (SIGKILL) when the guard drops, so a failing test leaves no stray
/// `cutover` behind to load the shared broker.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGTERM and wait (at most 60 s) until the process is gone: a clean stop (a sink
    /// commits its batch and leaves its group, capture flushes and confirms).
    pub fn terminate(&mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "process {pid} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `cutover` process with `args` and extra environment, stderr appended to `log` (a restart
/// keeps the earlier run's lines), killed when dropped.
pub fn cutover_process(args: &[&str], log: &Path, env: &[(&str, String)]) -> KillOnDrop {
    let mut cmd = Command::new(cutover_bin());
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map(KillOnDrop).unwrap()
}

/// The `/metrics` page of a cutover process at `addr` (host:port).
pub async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Certificates a test generates with openssl (see [`pki`]).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// ca.pem/ca.key, server.pem/server.key (CN and SAN `localhost` only, signed by ca),
/// client.pem/client.key (CN `certuser`, signed by ca; PKCS#8 key), other-ca.pem.
pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for ca in ["ca", "other-ca"] {
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=cutover test {ca}"),
            ],
        );
    }
    std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    for (name, cn, ext) in [("server", "localhost", true), ("client", "certuser", false)] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &*format!("{name}.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if ext {
            args.extend(["-extfile".into(), "server.ext".into()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(d, &refs);
    }
    Pki { dir }
}

/// Poll `cutover status --json` with `config` until its first sink shows no lag (60 s at most).
pub fn wait_until_caught_up(config: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = Command::new(cutover_bin())
            .args(["status", "--json", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if doc["sinks"][0]["lag_messages"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status never showed the sink caught up: {doc:#}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
