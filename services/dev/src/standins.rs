//! `tars-standins`: the stand-ins for KBase auth, Slack and the governance API, with the
//! demo world `tars-dev` uses, alone in one process, for trying TARS in containers
//! (`docker compose --profile standins up`) where the four services run on their own.

use std::net::SocketAddr;

use clap::Parser;
use tars_testkit::standin::demo::{self, Demo};

/// Where the stand-ins listen and where clicks on the Slack page go.
#[derive(Debug, Parser)]
#[command(
    name = "tars-standins",
    about = "Serve the Slack, KBase and governance stand-ins with the demo users"
)]
struct Args {
    /// KBase listens here; Slack on the next port, governance on the one after.
    #[arg(long, env = "STANDINS_ADDR", default_value = "0.0.0.0:8101")]
    addr: SocketAddr,
    /// The ingress that clicks on the Slack page are signed and sent to.
    #[arg(
        long,
        env = "STANDINS_INGRESS_URL",
        default_value = "http://ingress:8000"
    )]
    ingress_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tars_observability::telemetry::init("info", "text");
    let world = Demo::start(args.addr, &args.ingress_url).await;
    tracing::info!(
        kbase = %world.kbase.url(),
        slack = %world.slack.url(),
        governance = %world.governance.url(),
        user_token = demo::USER_TOKEN,
        admin_token = demo::ADMIN_TOKEN,
        "stand-ins are serving; the Slack channel page is the Slack port's /"
    );
    tars_observability::shutdown::on_signal().cancelled().await;
    Ok(())
}
