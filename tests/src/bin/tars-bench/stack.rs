//! One scenario's system: nats-server and the stand-ins (Slack, KBase, governance) in the
//! bench process, the services as their own processes, as deployed. Measures each
//! process's start-up, idle CPU and footprint under load.

use std::time::Duration;

use tars_testkit::NatsServer;
use tars_testkit::nats_server::free_port;
use tars_testkit::standin::{governance::FakeGovernance, kbase::FakeKbase, slack::FakeSlack};

use super::procs::{self, Service, Usage};

/// The Slack bot token, signing secret and channel the stand-ins and services share.
pub const SLACK_TOKEN: &str = "xoxb-bench";
pub const SIGNING_SECRET: &str = "s";
pub const CHANNEL: &str = "C1";
/// The governance API's token.
pub const GOVERNANCE_TOKEN: &str = "gov";
/// The admin's KBase token (user `benchadmin`), allowed to approve.
pub const ADMIN_TOKEN: &str = "bench-admin";

/// nats-server, the stand-ins and the running services of one scenario.
pub struct Stack {
    pub nats: NatsServer,
    pub kbase: FakeKbase,
    pub slack: FakeSlack,
    pub governance: FakeGovernance,
    /// The ingress's public base URL.
    pub base: String,
    scenario: String,
    services: Vec<Service>,
    /// CPU each process used per second of the idle period after start-up, by name.
    idle: Vec<(&'static str, f64)>,
}

/// Every process's usage at one moment, by name.
pub struct Snapshot(Vec<(&'static str, Usage)>);

impl Snapshot {
    /// `name`'s usage, if it was running.
    fn get(&self, name: &str) -> Option<Usage> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
    }
}

/// CPU time per operation, in the unit that keeps it readable.
fn per_op(cpu: Duration, ops: usize) -> String {
    let us = cpu.as_secs_f64() * 1e6 / ops as f64;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

impl Stack {
    /// Starts nats-server (an fsync per write, or the default sync interval), the
    /// stand-ins, the ingress and, with `workers`, the three workers, each waited on until
    /// ready; prints each one's start-up time, then measures idle CPU over a quiet period.
    pub async fn start(scenario: &str, workers: bool, fsync: bool) -> Self {
        let nats = if fsync {
            NatsServer::start()
        } else {
            NatsServer::start_without_fsync()
        }
        .expect("start nats-server");
        let kbase = FakeKbase::start().await;
        kbase.accept_any_with_prefix("bench-");
        kbase.add_user(ADMIN_TOKEN, "benchadmin", &["CDM_JUPYTERHUB_ADMIN"]);
        let slack = FakeSlack::start(SLACK_TOKEN, &[CHANNEL]).await;
        let governance = FakeGovernance::start(GOVERNANCE_TOKEN).await;
        governance.allow_any_tenant(true);
        let listen = free_port();
        let mut stack = Self {
            base: format!("http://127.0.0.1:{listen}"),
            nats,
            kbase,
            slack,
            governance,
            scenario: scenario.to_owned(),
            services: Vec::new(),
            idle: Vec::new(),
        };
        let ingress = stack.ingress_env(listen);
        stack.add("tars-ingress", &ingress).await;
        if workers {
            for name in ["tars-notifier", "tars-decision", "tars-governance-applier"] {
                let env = stack.worker_env(name);
                stack.add(name, &env).await;
            }
        }
        let ready: Vec<String> = stack
            .services
            .iter()
            .map(|s| format!("{} {}", s.name, super::ms(s.ready_in)))
            .collect();
        println!("  spawn → ready (/readyz 200): {}", ready.join(", "));
        stack.measure_idle().await;
        stack
    }

    /// What every service gets: the test server, quiet logs.
    fn common_env(&self) -> Vec<(&'static str, String)> {
        vec![("NATS_URL", self.nats.url()), ("LOG_LEVEL", "error".into())]
    }

    /// The ingress against the stand-ins: KBase tokens cached for the whole run, Slack
    /// interactivity on (an approver `U1` acting as `benchadmin`), tenants not checked.
    fn ingress_env(&self, listen: u16) -> Vec<(&'static str, String)> {
        let mut env = self.common_env();
        env.extend([
            ("LISTEN_ADDR", format!("127.0.0.1:{listen}")),
            ("KBASE_AUTH_URL", self.kbase.url()),
            ("KBASE_CACHE_TTL", "10m".into()),
            // The ingress part's 5,000 users each submit about a dozen requests in a
            // run (each for a new tenant): the per-user limits are raised so none is
            // refused; the token cache keeps its default bound (10,000).
            ("SUBMIT_RATE_PER_MINUTE", "1000".into()),
            ("MAX_OPEN_REQUESTS_PER_USER", "200".into()),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET.into()),
            ("SLACK_APPROVERS", "U1:benchadmin".into()),
            ("SLACK_BOT_TOKEN", SLACK_TOKEN.into()),
            ("SLACK_API_URL", self.slack.url()),
        ]);
        env
    }

    /// A worker with 32 messages in flight, against the stand-ins.
    fn worker_env(&self, name: &str) -> Vec<(&'static str, String)> {
        let mut env = self.common_env();
        env.push(("WORKER_CONCURRENCY", "32".into()));
        match name {
            "tars-notifier" => env.extend([
                ("SLACK_BOT_TOKEN", SLACK_TOKEN.into()),
                ("SLACK_API_URL", self.slack.url()),
                ("SLACK_CHANNEL_ID", CHANNEL.into()),
            ]),
            "tars-decision" => env.push(("REQUEST_TTL", "24h".into())),
            "tars-governance-applier" => env.extend([
                ("GOVERNANCE_API_URL", self.governance.url()),
                ("GOVERNANCE_TOKEN", GOVERNANCE_TOKEN.into()),
            ]),
            _ => {}
        }
        env
    }

    /// Starts one more service process with `env` (on its own free health port) and waits
    /// until it is ready.
    pub async fn add(&mut self, name: &'static str, env: &[(&'static str, String)]) -> &Service {
        let service = Service::start(&self.scenario, name, free_port(), env).await;
        self.services.push(service);
        self.services.last().expect("just pushed")
    }

    /// The usual environment of worker `name`, for [`Stack::add`] with changes.
    pub fn env_of(&self, name: &str) -> Vec<(&'static str, String)> {
        self.worker_env(name)
    }

    /// Every process of the stack: the services, nats-server, and this bench (the
    /// stand-ins and the e2e clients share the machine's cores with them).
    fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut all: Vec<(&'static str, u32)> =
            self.services.iter().map(|s| (s.name, s.pid())).collect();
        if let Some(pid) = self.nats.pid() {
            all.push(("nats-server", pid));
        }
        all.push(("(tars-bench, stand-ins)", std::process::id()));
        all
    }

    /// Panics if a service process has exited (see [`Service::assert_running`]).
    pub fn assert_running(&mut self) {
        for s in &mut self.services {
            s.assert_running();
        }
    }

    /// Every process's usage now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.processes()
                .into_iter()
                .map(|(name, pid)| (name, procs::usage(pid)))
                .collect(),
        )
    }

    /// CPU per second of every process over the plan's idle period, with no traffic (the
    /// period is the measurement, not a wait for something).
    async fn measure_idle(&mut self) {
        let idle = super::plan::get().idle;
        let before = self.snapshot();
        tokio::time::sleep(idle).await;
        let after = self.snapshot();
        self.idle = after
            .0
            .iter()
            .map(|(name, u)| {
                let used = u
                    .cpu
                    .saturating_sub(before.get(name).unwrap_or_default().cpu);
                (*name, used.as_secs_f64() * 1e3 / idle.as_secs_f64())
            })
            .collect();
    }

    /// Prints each process's start-up time, idle CPU, CPU used since `load` (and per
    /// operation, when `ops` counts them), resident set and its peak. CPU comes from
    /// `/proc/<pid>/stat` in clock ticks (10 ms), so an idle figure is ±1 tick over the
    /// idle period.
    pub fn footprint(&self, load: &Snapshot, ops: Option<(usize, &str)>) {
        let per = ops.map_or(String::new(), |(_, what)| format!("CPU per {what}"));
        println!(
            "  {:<24} {:>9} {:>11} {:>9} {:>18} {:>9} {:>9}",
            "footprint", "ready in", "idle CPU", "load CPU", per, "RSS", "RSS peak"
        );
        let mut late = false;
        for (name, u) in &self.snapshot().0 {
            let ready = self
                .services
                .iter()
                .find(|s| s.name == *name)
                .map_or("-".into(), |s| super::ms(s.ready_in));
            let idle = self
                .idle
                .iter()
                .find(|(n, _)| n == name)
                .map_or("-".into(), |(_, v)| format!("{v:.1} ms/s"));
            // A process started after the load began: its whole CPU time, no per-op figure.
            let (cpu, mark, per) = match (load.get(name), ops) {
                (Some(at), Some((n, _))) if n > 0 => {
                    let cpu = u.cpu.saturating_sub(at.cpu);
                    (cpu, " ", per_op(cpu, n))
                }
                (Some(at), _) => (u.cpu.saturating_sub(at.cpu), " ", String::new()),
                (None, _) => {
                    late = true;
                    (u.cpu, "*", "-".into())
                }
            };
            println!(
                "  {:<24} {:>9} {:>11} {:>7.2} s{mark}{:>17} {:>6.1} MB {:>6.1} MB",
                name,
                ready,
                idle,
                cpu.as_secs_f64(),
                per,
                u.rss_kb as f64 / 1024.0,
                u.peak_kb as f64 / 1024.0
            );
        }
        if late {
            println!("  * started after the load began: its CPU since it started");
        }
    }

    /// Stops every service (SIGTERM, all at once, each waited for), then nats-server and
    /// the stand-ins.
    pub async fn stop(self) {
        futures::future::join_all(self.services.into_iter().map(Service::stop)).await;
    }
}

/// The section's nats-server setting, for headers.
pub fn sync_name(fsync: bool) -> &'static str {
    if fsync {
        "sync_interval: always (fsync per write)"
    } else {
        "the default sync interval"
    }
}
