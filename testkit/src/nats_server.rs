//! A real `nats-server -js` per test: free loopback port, its own store directory.
//!
//! Tests never mock NATS and never use the shared default port. The server can be stopped
//! gracefully, killed with SIGKILL and started again on the same port and store (with
//! `sync_interval: always`, so acknowledged writes survive the kill), and three of them can
//! form a cluster.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// The nats-server binary: `$NATS_SERVER_BIN`, `nats-server` on PATH, or the project-local
/// install (made by `scripts/ensure-nats-server.sh` when missing).
pub fn binary() -> Result<PathBuf, HarnessError> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN")
        && Path::new(&p).is_file()
    {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| err("no workspace root"))?
        .to_path_buf();
    let script = root.join("scripts/ensure-nats-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| err(format!("run {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(err(format!("no nats-server at {}", path.display())))
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed by its owner's `Drop`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One nats-server process and its store; killed and cleaned up on drop.
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// Whether the directory is ours to delete (false for `tars-dev`'s data folder).
    owns_dir: bool,
}

/// How a server is configured.
#[derive(Debug, Clone)]
struct Setup {
    /// Run JetStream at all.
    jetstream: bool,
    /// fsync every write (`sync_interval: always`), so a SIGKILL loses no acked write.
    sync_always: bool,
    /// More configuration (cluster blocks).
    extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            jetstream: true,
            sync_always: true,
            extra: String::new(),
        }
    }
}

impl NatsServer {
    /// Starts a single JetStream server on a free port with a temporary store.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_in(temp_dir("tars-nats"), free_port(), true, Setup::default())
    }

    /// Starts a server without JetStream, to check the error TARS gives for one.
    pub fn start_without_jetstream() -> Result<Self, HarnessError> {
        let setup = Setup {
            jetstream: false,
            ..Setup::default()
        };
        Self::start_in(temp_dir("tars-nats"), free_port(), true, setup)
    }

    /// Starts a server with nats-server's default sync interval instead of an fsync per
    /// write: faster, but a SIGKILL may lose the last acknowledged writes. For benchmarks
    /// that compare the two.
    pub fn start_without_fsync() -> Result<Self, HarnessError> {
        let setup = Setup {
            sync_always: false,
            ..Setup::default()
        };
        Self::start_in(temp_dir("tars-nats"), free_port(), true, setup)
    }

    /// Starts a server whose store lives in `dir` (kept after drop) on `port`.
    pub fn start_persistent(dir: PathBuf, port: u16) -> Result<Self, HarnessError> {
        Self::start_in(dir, port, false, Setup::default())
    }

    fn start_in(
        dir: PathBuf,
        port: u16,
        owns_dir: bool,
        setup: Setup,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir.join("store"))
            .map_err(|e| err(format!("create {}: {e}", dir.display())))?;
        let config = dir.join("nats.conf");
        let store = dir.join("store");
        let mut text = format!("listen: 127.0.0.1:{port}\n{}\n", setup.extra);
        if setup.jetstream {
            let sync = if setup.sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            };
            text.push_str(&format!("jetstream {{\n  store_dir: {store:?}\n{sync}}}\n"));
        }
        std::fs::write(&config, text).map_err(|e| err(format!("write config: {e}")))?;
        let mut server = Self {
            port,
            dir,
            config,
            child: None,
            owns_dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::File::create(self.dir.join("nats.log"))
            .map_err(|e| err(format!("create log: {e}")))?;
        let child = Command::new(binary()?)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("spawn nats-server: {e}")))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(err(format!(
                    "nats-server exited with {status}; log: {}",
                    std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(err(format!(
            "nats-server on port {} not ready in 20 s",
            self.port
        )))
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops gracefully (SIGTERM) and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }

    /// Starts a killed or stopped server again on the same port and store.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Three JetStream servers routed into one cluster, for replicated streams.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes on free ports and waits until each accepts clients.
    pub fn start() -> Result<Self, HarnessError> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, cport) in cluster_ports.iter().enumerate() {
            let extra = format!(
                "server_name: n{i}\ncluster {{\n  name: tars\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            let setup = Setup {
                extra,
                ..Setup::default()
            };
            nodes.push(NatsServer::start_in(
                temp_dir("tars-nats-cluster"),
                free_port(),
                true,
                setup,
            )?);
        }
        Ok(Self { nodes })
    }

    /// A client URL list naming every node.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}
