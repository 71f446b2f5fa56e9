//! The services under test as separate processes: the real binaries from a bin dir,
//! started with the environment a deployment gives them, waited on until `/readyz`
//! answers, stopped with SIGTERM; and what each process costs, read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The four service binaries the bench spawns.
pub const BINARIES: [&str; 4] = [
    "tars-ingress",
    "tars-notifier",
    "tars-decision",
    "tars-governance-applier",
];

/// Where the service binaries come from: `$TARS_BENCH_BIN_DIR`, else
/// `<workspace>/target/release`. Pointing it at an older build's binaries measures that
/// build with the same harness (a before/after comparison).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("TARS_BENCH_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
        let dir = dir.canonicalize().unwrap_or(dir);
        for bin in BINARIES {
            assert!(
                dir.join(bin).is_file(),
                "{} is missing: build the services first (`cargo build --release -p tars-ingress \
                 -p tars-notifier -p tars-decision -p tars-governance-applier`), or point \
                 TARS_BENCH_BIN_DIR at a directory holding them",
                dir.join(bin).display()
            );
        }
        dir
    })
}

/// The directory the services' output goes to (one file per process and scenario), kept
/// out of the terminal; its path is printed when something fails.
pub fn log_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tars_testkit::nats_server::temp_dir("tars-bench-logs"))
}

/// Prints where the services' logs are before any panic's message, so a failed run says
/// where to look.
pub fn print_logs_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!(
            "tars-bench failed; the services' logs: {}",
            log_dir().display()
        );
        default(info);
    }));
}

static PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records something that makes the run's numbers untrustworthy (a non-2xx answer, a
/// lifecycle that did not complete, a process that exited on its own). The run goes on,
/// so every number is still printed, and exits non-zero at the end ([`exit_status`]).
pub fn problem(what: String) {
    println!("  PROBLEM: {what}");
    PROBLEMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(what);
}

/// The process exit code: 0 when no problem was recorded; otherwise the problems are
/// listed with the log directory, and the code is 1. Logs of a clean run are removed.
pub fn exit_status() -> i32 {
    let problems = PROBLEMS.lock().unwrap_or_else(|p| p.into_inner());
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(log_dir());
        return 0;
    }
    println!("\n{} problem(s):", problems.len());
    for p in problems.iter() {
        println!("  - {p}");
    }
    println!("the services' logs: {}", log_dir().display());
    1
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times: `getconf CLK_TCK`, asked
/// once (100 on every Linux TARS runs on, the fallback).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// What a process has used so far, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Resident set now (`VmRSS`), kB.
    pub rss_kb: u64,
    /// Peak resident set (`VmHWM`), kB.
    pub peak_kb: u64,
}

/// Reads `pid`'s CPU time and memory; zeros for a process that is gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    // Fields after the command name (which may hold spaces, so split after its `)`):
    // state is field 3, utime and stime fields 14 and 15.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ticks = ticks(14 - 3) + ticks(15 - 3);
    Usage {
        cpu: Duration::from_secs_f64(cpu_ticks as f64 / clock_ticks()),
        rss_kb: kb("VmRSS:"),
        peak_kb: kb("VmHWM:"),
    }
}

/// One service process.
pub struct Service {
    /// Its binary's name.
    pub name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    /// Its health and metrics port (`/readyz`, `/metrics`).
    pub health_port: u16,
    log: PathBuf,
    /// From spawn until `/readyz` answered 200.
    pub ready_in: Duration,
}

impl Service {
    /// Spawns `name` from [`bin_dir`] with only `env` (plus `METRICS_ADDR` on
    /// `health_port`), its output in `<scenario>-<name>.log`, and waits until it is ready.
    pub async fn start(
        scenario: &str,
        name: &'static str,
        health_port: u16,
        env: &[(&str, String)],
    ) -> Self {
        let log = log_dir().join(format!("{scenario}-{name}.log"));
        let out = std::fs::File::create(&log).expect("create a log file");
        let err = out.try_clone().expect("clone a log file handle");
        let mut cmd = tokio::process::Command::new(bin_dir().join(name));
        // Nothing from the bench's environment (an OTLP endpoint, a NATS_URL) leaks in.
        cmd.env_clear()
            .env("METRICS_ADDR", format!("127.0.0.1:{health_port}"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A panicking bench leaves no process behind.
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin_dir().join(name).display()));
        let pid = child.id().expect("a running child has an id");
        let mut service = Self {
            name,
            child,
            pid,
            health_port,
            log,
            ready_in: Duration::ZERO,
        };
        service.wait_ready(spawned).await;
        service.ready_in = spawned.elapsed();
        service
    }

    /// Polls `/readyz` every 20 ms (a readiness probe, as Kubernetes does) until it answers
    /// 200; panics, naming the log, if the process exits or the deadline passes.
    async fn wait_ready(&mut self, spawned: Instant) {
        let url = format!("http://127.0.0.1:{}/readyz", self.health_port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready; its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                spawned.elapsed() < super::plan::READY_DEADLINE,
                "{} was not ready within {:?}; its log: {}",
                self.name,
                super::plan::READY_DEADLINE,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics, with the end of its log, if the process has exited: a dead service
    /// fails the run at once instead of timing out every wait after it.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited during the run with {status}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the process's output.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the process as a deployment does (SIGTERM), and waits for it. A process that
    /// had already exited, did not stop within 20 s, or exited with a failure is a
    /// recorded [`problem`].
    pub async fn stop(mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            problem(format!(
                "{} exited during the run with {status} (log: {})",
                self.name,
                self.log.display()
            ));
            return;
        }
        // No libc in this crate: the `kill` command sends the signal.
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            problem(format!("could not send SIGTERM to {}", self.name));
        }
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => problem(format!(
                "{} exited with {status} after SIGTERM (log: {})",
                self.name,
                self.log.display()
            )),
            Ok(Err(e)) => problem(format!("waiting for {}: {e}", self.name)),
            Err(_) => {
                problem(format!(
                    "{} did not stop within 20 s of SIGTERM (log: {})",
                    self.name,
                    self.log.display()
                ));
                let _ = self.child.kill().await;
            }
        }
    }
}
