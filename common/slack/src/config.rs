//! The Slack bot settings, shared by the ingress (token modal, replies to clickers) and
//! the notifier (messages).

use std::path::PathBuf;

use tars_observability::config::{ConfigError, Secret, secret};

/// The Slack bot settings, shared by the ingress (token modal, replies to clickers) and
/// the notifier (messages).
#[derive(Debug, Clone, clap::Args)]
pub struct SlackBotArgs {
    /// Slack bot token (or SLACK_BOT_TOKEN_FILE).
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true)]
    pub slack_bot_token: Option<Secret>,
    /// File holding the Slack bot token.
    #[arg(long, env = "SLACK_BOT_TOKEN_FILE")]
    pub slack_bot_token_file: Option<PathBuf>,
    /// Slack Web API base URL.
    #[arg(long, env = "SLACK_API_URL", default_value = "https://slack.com/api")]
    pub slack_api_url: String,
}

impl SlackBotArgs {
    /// A bot token given directly, for a Web API at `api_url`.
    pub fn new(token: &str, api_url: &str) -> Self {
        Self {
            slack_bot_token: Some(token.into()),
            slack_bot_token_file: None,
            slack_api_url: api_url.to_owned(),
        }
    }

    /// The token, from either spelling.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        secret(
            "SLACK_BOT_TOKEN",
            self.slack_bot_token.as_ref().map(Secret::expose),
            self.slack_bot_token_file.as_deref(),
        )
    }
}
