//! The governance API settings, shared by the governance-applier (grants) and the ingress
//! (tenant checks at submit).

use std::path::PathBuf;
use std::time::Duration;

use tars_observability::config::{ConfigError, Secret, secret};
use tars_observability::metrics::Metrics;

use crate::{Api, GovernanceClient};

/// `GOVERNANCE_API_URL`, `GOVERNANCE_TOKEN` (or `_FILE`) and `GOVERNANCE_API`.
#[derive(Debug, Clone, clap::Args)]
pub struct GovernanceArgs {
    /// Base URL of the governance API (minio_manager_service).
    #[arg(long, env = "GOVERNANCE_API_URL")]
    pub governance_api_url: Option<String>,
    /// Bearer token for the governance API (or GOVERNANCE_TOKEN_FILE).
    #[arg(long, env = "GOVERNANCE_TOKEN", hide_env_values = true)]
    pub governance_token: Option<Secret>,
    /// File holding the governance token.
    #[arg(long, env = "GOVERNANCE_TOKEN_FILE")]
    pub governance_token_file: Option<PathBuf>,
    /// Which membership API to speak: `tenants` (readable, unambiguous) or `groups` (the
    /// older API).
    #[arg(long, env = "GOVERNANCE_API", default_value = "tenants")]
    pub governance_api: Api,
}

impl Default for GovernanceArgs {
    /// No governance API: the ingress then checks no tenants.
    fn default() -> Self {
        Self {
            governance_api_url: None,
            governance_token: None,
            governance_token_file: None,
            governance_api: Api::Tenants,
        }
    }
}

impl GovernanceArgs {
    /// Settings for a governance API at `url` with `token`, tenant API (tests, `tars-dev`).
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            governance_api_url: Some(url.to_owned()),
            governance_token: Some(token.into()),
            governance_token_file: None,
            governance_api: Api::Tenants,
        }
    }

    /// The client these settings describe, or `None` when no URL is set; a problem (a
    /// URL without a token, an unreadable token file) is added to `problems`.
    pub fn client(
        &self,
        metrics: &Metrics,
        problems: &mut Vec<ConfigError>,
    ) -> Option<GovernanceClient> {
        let token = secret(
            "GOVERNANCE_TOKEN",
            self.governance_token.as_ref().map(Secret::expose),
            self.governance_token_file.as_deref(),
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let url = self.governance_api_url.as_deref()?;
        let Some(token) = token else {
            problems.push(ConfigError::new(
                "GOVERNANCE_TOKEN",
                "required with GOVERNANCE_API_URL (or GOVERNANCE_TOKEN_FILE)",
            ));
            return None;
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .ok()?;
        Some(GovernanceClient::new(
            http,
            url,
            &token,
            self.governance_api,
            metrics.clone(),
        ))
    }
}
