//! Refusing, at submit, a tenant the governance API does not know, or one whose read-only
//! group would be another tenant's name (the older group API's ambiguity), so a request
//! that could only fail, or grant the wrong access, is never accepted.
//!
//! Answers are cached briefly (concurrent first lookups of one tenant share one call);
//! an outage is not cached, and answers 503 rather than accepting an unchecked tenant.

use std::time::Duration;

use axum::http::StatusCode;
use std::sync::Arc;
use tars_domain::{Permission, TenantName};

use tars_governance::{Api, GovernanceClient, GovernanceError, Steward, TenantInfo};

use crate::error::ApiError;

/// How long an answer about a tenant is trusted.
const TTL: Duration = Duration::from_secs(30);

/// The tenant check of the ingress; cheap to clone.
#[derive(Clone)]
pub struct TenantCheck {
    client: GovernanceClient,
    /// tenant name → what `GET /tenants/{tenant}` said (`None`: no such tenant): one
    /// lookup answers both "does it exist" and "who stewards it".
    tenants: moka::future::Cache<String, Option<Arc<TenantInfo>>>,
}

impl TenantCheck {
    /// A check asking `client`.
    pub fn new(client: GovernanceClient) -> Self {
        Self {
            client,
            tenants: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TTL)
                .build(),
        }
    }

    /// What the governance API says about `tenant`, cached; an outage is 503, never "no
    /// such tenant".
    async fn info(&self, tenant: &TenantName) -> Result<Option<Arc<TenantInfo>>, ApiError> {
        let lookup = async { self.client.tenant(tenant).await.map(|t| t.map(Arc::new)) };
        self.tenants
            .try_get_with(tenant.as_str().to_owned(), lookup)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// `tenant`'s stewards (none for a tenant the governance API does not know).
    pub async fn stewards(&self, tenant: &TenantName) -> Result<Vec<Steward>, ApiError> {
        Ok(self
            .info(tenant)
            .await?
            .map(|i| i.stewards.clone())
            .unwrap_or_default())
    }

    async fn exists(&self, tenant: &str) -> Result<bool, ApiError> {
        let Ok(name) = TenantName::parse(tenant) else {
            return Ok(false);
        };
        Ok(self.info(&name).await?.is_some())
    }

    /// `Ok` if a request for `permission` on `tenant` can be applied unambiguously.
    pub async fn check(&self, tenant: &TenantName, permission: Permission) -> Result<(), ApiError> {
        if !self.exists(tenant.as_str()).await? {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_tenant",
                format!("tenant_name: the governance API has no tenant {tenant}"),
            ));
        }
        if self.client.api() == Api::Groups && permission == Permission::ReadOnly {
            let group = permission.group_for(tenant);
            if self.exists(&group).await? {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "ambiguous_tenant",
                    format!(
                        "tenant_name: read_only on {tenant} is group {group}, which is also the \
                         read-write group of tenant {group}; refused so the wrong access is never granted"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn unavailable(e: &GovernanceError) -> ApiError {
    tracing::warn!(error = %e, "tenant check failed");
    ApiError::unavailable("the governance API could not confirm the tenant; try again shortly")
}
