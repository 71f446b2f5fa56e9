//! A real `nats-server -js` per test: free loopback port, its own store directory.
//!
//! Tests never mock NATS and never use the shared default port. The server can be stopped
//! gracefully, killed with SIGKILL and started again on the same port and store (with
//! `sync_interval: always`, so acknowledged writes survive the kill), and several of them
//! can form a cluster: on loopback, or each in its own network namespace so a test can cut
//! one off the network ([`NatsCluster::cut`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
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
    host: IpAddr,
    port: u16,
    monitor_port: Option<u16>,
    /// The network namespace it runs in, if not the test process's.
    netns: Option<String>,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// Whether the directory is ours to delete (false for `tars-dev`'s data folder).
    owns_dir: bool,
}

/// Settings written into a server's `nats.conf` besides the ones the harness owns
/// (addresses, names, routes, the store directory): for example the `merge` maps of the
/// Helm values TARS ships. Each is a `(key, value)` pair written as `"key": value`, the
/// value in nats.conf syntax (JSON is valid nats.conf, and is what the NATS Helm chart
/// writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// Settings at the top level of the configuration.
    pub top_level: Vec<(String, String)>,
    /// Settings inside its `jetstream { }` block.
    pub jetstream: Vec<(String, String)>,
}

impl ServerSettings {
    /// `sync_interval: always` only: an fsync per write, so a SIGKILL loses no
    /// acknowledged write (the harness's default).
    pub fn fsync_always() -> Self {
        Self {
            top_level: Vec::new(),
            jetstream: vec![("sync_interval".into(), "always".into())],
        }
    }
}

/// Top-level keys the harness writes itself (compared lowercased, as nats-server does).
const OWN_TOP_LEVEL: &[&str] = &[
    "listen",
    "host",
    "net",
    "port",
    "http",
    "http_port",
    "monitor_port",
    "https",
    "https_port",
    "server_name",
    "cluster",
    "jetstream",
];
/// `jetstream { }` keys the harness writes itself.
const OWN_JETSTREAM: &[&str] = &["store_dir", "store"];

/// Renders `settings` as `"key": value` lines, refusing a key the harness sets itself or
/// one given twice.
fn render(
    settings: &[(String, String)],
    own: &[&str],
    block: &str,
) -> Result<String, HarnessError> {
    let mut seen = Vec::new();
    let mut text = String::new();
    for (key, value) in settings {
        let lower = key.to_lowercase();
        if own.contains(&lower.as_str()) {
            return Err(err(format!(
                "{block} setting `{key}` is one the test harness sets itself; it cannot be taken from the settings"
            )));
        }
        if seen.contains(&lower) {
            return Err(err(format!("{block} setting `{key}` is given twice")));
        }
        if value.trim().is_empty() || value.contains('\n') {
            return Err(err(format!(
                "{block} setting `{key}` has no one-line value: {value:?}"
            )));
        }
        seen.push(lower);
        let key = serde_json::to_string(key).map_err(|e| err(format!("key {key:?}: {e}")))?;
        text.push_str(&format!("{key}: {value}\n"));
    }
    Ok(text)
}

/// How a server is configured.
#[derive(Debug, Clone)]
struct Setup {
    /// Run JetStream at all.
    jetstream: bool,
    /// Where it listens for clients (and routes and monitoring, if any).
    host: IpAddr,
    /// The monitoring port (`/varz`, `/jsz`), if any.
    monitor_port: Option<u16>,
    /// The network namespace to run in (`ip netns exec`), if any.
    netns: Option<String>,
    /// More configuration the harness writes (server name, cluster block).
    extra: String,
    /// Settings from the caller.
    settings: ServerSettings,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            jetstream: true,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            monitor_port: None,
            netns: None,
            extra: String::new(),
            settings: ServerSettings::fsync_always(),
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
            settings: ServerSettings::default(),
            ..Setup::default()
        };
        Self::start_in(temp_dir("tars-nats"), free_port(), true, setup)
    }

    /// Starts a server with nats-server's default sync interval instead of an fsync per
    /// write: faster, but a SIGKILL may lose the last acknowledged writes. For benchmarks
    /// that compare the two.
    pub fn start_without_fsync() -> Result<Self, HarnessError> {
        let setup = Setup {
            settings: ServerSettings::default(),
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
        let host = setup.host;
        let mut text = format!("listen: \"{host}:{port}\"\n");
        if let Some(m) = setup.monitor_port {
            text.push_str(&format!("http: \"{host}:{m}\"\n"));
        }
        text.push_str(&setup.extra);
        text.push_str(&render(
            &setup.settings.top_level,
            OWN_TOP_LEVEL,
            "top-level",
        )?);
        if setup.jetstream {
            let js = render(&setup.settings.jetstream, OWN_JETSTREAM, "jetstream")?;
            let js: String = js.lines().map(|l| format!("  {l}\n")).collect();
            text.push_str(&format!("jetstream {{\n  store_dir: {store:?}\n{js}}}\n"));
        } else if !setup.settings.jetstream.is_empty() {
            return Err(err("jetstream settings for a server without JetStream"));
        }
        std::fs::write(&config, text).map_err(|e| err(format!("write config: {e}")))?;
        let mut server = Self {
            host,
            port,
            monitor_port: setup.monitor_port,
            netns: setup.netns,
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
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary()?);
                c
            }
            None => Command::new(binary()?),
        };
        // `ip netns exec` execs the server (no fork), so the child is the server itself.
        let child = cmd
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
        let addr = SocketAddr::new(self.host, self.port);
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
        Err(err(format!("nats-server on {addr} not ready in 20 s")))
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.host, self.port))
    }

    /// The monitoring endpoint's base URL (`…/varz`, `…/jsz`), for servers that serve one
    /// (cluster nodes).
    pub fn monitoring_url(&self) -> Option<String> {
        self.monitor_port
            .map(|m| format!("http://{}", SocketAddr::new(self.host, m)))
    }

    /// The generated `nats.conf`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The server's log (its stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id while it runs (`None` once stopped or killed), for
    /// benchmarks that read its footprint from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

/// How to start a [`NatsCluster`].
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// How many nodes.
    pub nodes: usize,
    /// Settings every node's `nats.conf` gets.
    pub server: ServerSettings,
    /// Run each node in its own network namespace (root only; see [`crate::netns`]), so a
    /// test can cut one off the network; otherwise all listen on loopback.
    pub isolated: bool,
}

impl Default for ClusterSettings {
    /// Three nodes on loopback with `sync_interval: always`.
    fn default() -> Self {
        Self {
            nodes: 3,
            server: ServerSettings::fsync_always(),
            isolated: false,
        }
    }
}

/// JetStream servers routed into one cluster, for replicated streams.
pub struct NatsCluster {
    /// The nodes, in start order; node `i` is named `n<i>`.
    pub nodes: Vec<NatsServer>,
    /// The namespaces of isolated nodes; dropped after the nodes (field order).
    network: Option<crate::netns::Netns>,
}

/// The ports of a node in its own namespace, where nothing else listens.
const NETNS_CLIENT_PORT: u16 = 4222;
const NETNS_ROUTE_PORT: u16 = 6222;
const NETNS_MONITOR_PORT: u16 = 8222;

impl NatsCluster {
    /// Starts three nodes on free loopback ports and waits until each accepts clients.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&ClusterSettings::default())
    }

    /// Starts `settings.nodes` nodes with `settings.server` in every node's configuration
    /// (and nothing else of the harness's own but addresses, names, routes, the store
    /// directory and a monitoring port), and waits until each accepts clients.
    pub fn start_with(settings: &ClusterSettings) -> Result<Self, HarnessError> {
        if settings.nodes == 0 {
            return Err(err("a cluster needs at least one node"));
        }
        let network = if settings.isolated {
            Some(crate::netns::Netns::create(settings.nodes)?)
        } else {
            None
        };
        // (host, client port, route port, monitoring port, namespace) of each node.
        let places: Vec<(IpAddr, u16, u16, u16, Option<String>)> = (0..settings.nodes)
            .map(|i| match &network {
                Some(net) => (
                    net.address(i),
                    NETNS_CLIENT_PORT,
                    NETNS_ROUTE_PORT,
                    NETNS_MONITOR_PORT,
                    Some(net.namespace(i).to_owned()),
                ),
                None => (
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    free_port(),
                    free_port(),
                    free_port(),
                    None,
                ),
            })
            .collect();
        let routes: Vec<String> = places
            .iter()
            .map(|(host, _, route, _, _)| {
                format!("\"nats-route://{}\"", SocketAddr::new(*host, *route))
            })
            .collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            network,
        };
        for (i, (host, port, route, monitor, netns)) in places.into_iter().enumerate() {
            let extra = format!(
                "server_name: n{i}\ncluster {{\n  name: tars\n  listen: \"{}\"\n  routes: [{}]\n}}\n",
                SocketAddr::new(host, route),
                routes.join(", ")
            );
            let setup = Setup {
                host,
                monitor_port: Some(monitor),
                netns,
                extra,
                settings: settings.server.clone(),
                ..Setup::default()
            };
            cluster.nodes.push(NatsServer::start_in(
                temp_dir("tars-nats-cluster"),
                port,
                true,
                setup,
            )?);
        }
        Ok(cluster)
    }

    /// A client URL list naming every node.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name` (`n<i>`), as JetStream reports leaders.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .filter(|i| *i < self.nodes.len())
    }

    /// Cuts node `i` off the network (see [`crate::netns::Netns::cut`]); only for a
    /// cluster started `isolated`.
    pub fn cut(&mut self, i: usize) -> Result<(), HarnessError> {
        self.network
            .as_mut()
            .ok_or_else(|| err("only an isolated cluster can be partitioned"))?
            .cut(i)
    }

    /// Puts node `i` back on the network.
    pub fn heal(&mut self, i: usize) -> Result<(), HarnessError> {
        self.network
            .as_mut()
            .ok_or_else(|| err("only an isolated cluster can be partitioned"))?
            .heal(i)
    }
}
