//! `tars-dev`: the whole of TARS on one machine, for trying it out.
//!
//! Starts a nats-server (data in the git-ignored `.data/` folder), the stand-ins for
//! KBase auth, Slack and the governance API, and the four services in this one process,
//! prints where everything is, and stops it all on Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tars_jetstream::config::{CommonArgs, WorkerArgs};
use tars_observability::metrics::Metrics;
use tars_slack::config::SlackBotArgs;
use tars_testkit::standin::demo::{
    ADMIN_TOKEN, APPROVERS, BOT_TOKEN, CHANNEL, Demo, GOV_TOKEN, SIGNING_SECRET, USER_TOKEN,
};
use tokio::task::JoinHandle;

/// Where the local stack keeps its data and which ports it uses.
#[derive(Debug, Parser)]
#[command(
    name = "tars-dev",
    about = "Run all of TARS locally with stand-ins for Slack, KBase and the governance API"
)]
struct Args {
    /// Folder for nats-server's store (git-ignored).
    #[arg(long, env = "TARS_DEV_DATA", default_value = ".data")]
    data: PathBuf,
    /// Port of the local nats-server.
    #[arg(long, env = "TARS_DEV_NATS_PORT", default_value_t = 4222)]
    nats_port: u16,
    /// Port of the ingress.
    #[arg(long, env = "TARS_DEV_PORT", default_value_t = 8000)]
    port: u16,
    /// First of three ports for the KBase, Slack and governance stand-ins.
    #[arg(long, env = "TARS_DEV_STANDIN_PORT", default_value_t = 8101)]
    standin_port: u16,
    /// How often the decision worker sweeps (expiry, reminders, ended access).
    #[arg(long, env = "EXPIRY_SWEEP_INTERVAL", default_value = "30s", value_parser = tars_domain::duration::parse_duration)]
    sweep_interval: Duration,
    /// How long a request waits before its thread gets a reminder.
    #[arg(long, env = "REMINDER_INTERVAL", default_value = "24h", value_parser = tars_domain::duration::parse_duration)]
    reminder_interval: Duration,
}

fn worker_args(port: u16) -> WorkerArgs {
    WorkerArgs::on(([127, 0, 0, 1], port).into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tars_observability::telemetry::init("info", "text");
    let data = std::path::absolute(&args.data)?;
    let server = tars_testkit::NatsServer::start_persistent(data.join("nats"), args.nats_port)?;
    let ingress_url = format!("http://127.0.0.1:{}", args.port);
    let Demo {
        kbase,
        slack,
        governance,
    } = Demo::start(
        tars_testkit::standin::loopback(args.standin_port),
        &ingress_url,
    )
    .await;

    let shutdown = tars_observability::shutdown::on_signal();
    let url = server.url();
    let ingress = tars_ingress::Args {
        listen_addr: ([127, 0, 0, 1], args.port).into(),
        slack_signing_secret: Some(SIGNING_SECRET.into()),
        slack_approvers: APPROVERS.into(),
        slack_bot: SlackBotArgs::new(BOT_TOKEN, &slack.url()),
        governance: tars_governance_applier::GovernanceArgs::new(&governance.url(), GOV_TOKEN),
        ..tars_ingress::Args::local(CommonArgs::for_url(&url), &kbase.url(), &slack.url())
    };
    let notifier = tars_notifier::Args {
        common: CommonArgs::for_url(&url),
        worker: worker_args(9091),
        slack_bot: SlackBotArgs::new(BOT_TOKEN, &slack.url()),
        slack_channel_id: Some(CHANNEL.into()),
        slack_max_posts_per_second: None,
        slack_timeout: std::time::Duration::from_secs(10),
    };
    let decision = tars_decision::Args {
        sweep_interval: args.sweep_interval,
        reminder_interval: args.reminder_interval,
        ..tars_decision::Args::new(CommonArgs::for_url(&url), worker_args(9092))
    };
    let applier = tars_governance_applier::Args {
        common: CommonArgs::for_url(&url),
        worker: worker_args(9093),
        governance: tars_governance_applier::GovernanceArgs::new(&governance.url(), GOV_TOKEN),
    };
    let s = shutdown.clone();
    let tasks: Vec<(&str, JoinHandle<anyhow::Result<()>>)> = vec![
        (
            "ingress",
            tokio::spawn(tars_ingress::run(ingress, Metrics::new(), s.clone())),
        ),
        (
            "notifier",
            tokio::spawn(tars_notifier::run(notifier, Metrics::new(), s.clone())),
        ),
        (
            "decision",
            tokio::spawn(async move {
                Ok(tars_decision::run(decision, Metrics::new(), s.clone()).await?)
            }),
        ),
        (
            "governance-applier",
            tokio::spawn(tars_governance_applier::run(
                applier,
                Metrics::new(),
                shutdown.clone(),
            )),
        ),
    ];

    println!(
        r#"
TARS is running (Ctrl-C stops it).

  ingress (REST API)     {ingress_url}        docs: {ingress_url}/openapi.json
  Slack channel (click)  {slack_page}
  NATS                   {url}   data in {data}
  metrics                {ingress_url}/metrics, http://127.0.0.1:9091|9092|9093/metrics

  user token   {USER_TOKEN}    (KBase user alice)
  admin token  {ADMIN_TOKEN}   (KBase user bob, admin; Slack user U_ADMIN)

Ask for access as alice:
  curl -s -X POST {ingress_url}/requests/ -H 'Authorization: Bearer {USER_TOKEN}' \
       -H 'Content-Type: application/json' \
       -d '{{"tenant_name":"demo","permission":"read_only","justification":"trying TARS"}}'
Then open the Slack channel page, pick who you click as, click Approve, and follow it
(alice's DMs appear on the right of the page):
  curl -s {ingress_url}/requests/<request_id> -H 'Authorization: Bearer {USER_TOKEN}'
"#,
        slack_page = slack.page_url(),
        data = data.display(),
    );
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => tracing::info!("{name} stopped"),
            Ok(Err(e)) => {
                shutdown.cancel();
                tracing::error!("{name} failed: {e:#}");
            }
            Err(e) => tracing::error!("{name} panicked: {e}"),
        }
    }
    drop(server);
    Ok(())
}
