//! The demo world that `tars-dev` (everything in one process) and `tars-standins` (the
//! stand-ins alone, for `docker compose --profile standins`) both serve: the same tokens,
//! users, approvers and channel, so a guide written for one works for the other.

use std::net::SocketAddr;

use super::{governance::FakeGovernance, kbase::FakeKbase, slack::FakeSlack};

/// KBase token of the demo user alice.
pub const USER_TOKEN: &str = "dev-user-token";
/// KBase token of the demo admin bob.
pub const ADMIN_TOKEN: &str = "dev-admin-token";
/// The Slack signing secret the stand-in signs clicks with.
pub const SIGNING_SECRET: &str = "dev-signing-secret";
/// The bot token the Slack stand-in accepts.
pub const BOT_TOKEN: &str = "xoxb-dev";
/// The approval channel.
pub const CHANNEL: &str = "C_APPROVALS";
/// The bearer token the governance stand-in accepts.
pub const GOV_TOKEN: &str = "dev-governance-token";
/// `SLACK_APPROVERS` for the demo: the Slack users allowed to click, with their KBase names.
pub const APPROVERS: &str = "U_ADMIN:bob,U_CAROL:carol";

/// The three stand-ins, set up as the demo expects.
pub struct Demo {
    /// KBase auth (`/api/V2/me`).
    pub kbase: FakeKbase,
    /// The Slack Web API and the channel page.
    pub slack: FakeSlack,
    /// minio_manager_service's tenant and group APIs.
    pub governance: FakeGovernance,
}

impl Demo {
    /// Serves KBase at `first`, Slack at the next port and governance at the one after;
    /// clicks on the Slack page are signed and sent to `ingress_url`.
    pub async fn start(first: SocketAddr, ingress_url: &str) -> Self {
        let at = |offset: u16| SocketAddr::new(first.ip(), first.port() + offset);
        let kbase = FakeKbase::start_at(at(0)).await;
        kbase.add_user(USER_TOKEN, "alice", &[]);
        kbase.add_user(ADMIN_TOKEN, "bob", &["CDM_JUPYTERHUB_ADMIN"]);
        let slack = FakeSlack::start_at(BOT_TOKEN, &[CHANNEL], at(1)).await;
        let governance = FakeGovernance::start_at(GOV_TOKEN, at(2)).await;
        governance.allow_any_tenant(true);
        slack.set_interaction_target(ingress_url, SIGNING_SECRET);
        // The page lets its visitor click as an approver or as somebody who is not one;
        // alice's KBase e-mail is a Slack user, so she gets her DMs in the page's DM pane.
        slack.set_approvers(&[
            ("U_ADMIN", "bob (approver, U_ADMIN)"),
            ("U_CAROL", "carol (approver, U_CAROL)"),
            ("U_GUEST", "guest (not an approver)"),
        ]);
        slack.add_user("alice@example.org", "U_ALICE");
        Self {
            kbase,
            slack,
            governance,
        }
    }
}
