//! The approval policy (`APPROVAL_POLICY`, a TOML file): who may decide a tenant's
//! requests, how many distinct approvals each permission needs, what is approved without a
//! human, where the approval message goes, and how long access may last.
//!
//! Parsing is pure (the shell reads the file and passes its text), and every mistake is
//! reported with the file, the line and the reason, so a bad policy stops a service at
//! start instead of deciding wrongly later. The rules a request is decided by are copied
//! into its record at submit ([`Rules`]), so a policy changed while a request waits does
//! not change the count it needs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;
use crate::ids::{Permission, TenantName, Username};

/// Who may approve or deny a tenant's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// This KBase user.
    User(Username),
    /// Anyone holding this KBase role (`role:<name>`).
    Role(String),
    /// The tenant's stewards, as the governance API lists them (`stewards`).
    Stewards,
    /// Anyone holding one of `KBASE_ADMIN_ROLES` (the built-in default), and the Slack
    /// users of `SLACK_APPROVERS`.
    Admins,
}

impl Approver {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "stewards" {
            return Ok(Self::Stewards);
        }
        if let Some(role) = s.strip_prefix("role:") {
            let ok = !role.is_empty()
                && role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            return if ok {
                Ok(Self::Role(role.to_owned()))
            } else {
                Err(format!("{s:?}: a role is role:<KBase role name>"))
            };
        }
        Username::parse(s)
            .map(Self::User)
            .map_err(|e| format!("{s:?} is not a KBase username, role:<role> or stewards ({e})"))
    }
}

/// What the shell knows about someone who wants to decide a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider<'a> {
    /// Their KBase username.
    pub username: &'a Username,
    /// Their KBase roles.
    pub roles: &'a [String],
    /// Whether they hold an admin role (or are an allowlisted Slack approver).
    pub is_admin: bool,
    /// Whether they steward the request's tenant.
    pub is_steward: bool,
}

/// The rules one tenant's requests follow, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Who may approve or deny.
    pub approvers: Vec<Approver>,
    /// Distinct approvals a read_only request needs.
    pub read_only_approvals: u32,
    /// Distinct approvals a read_write request needs.
    pub read_write_approvals: u32,
    /// Permissions approved without a human (`decided_by: policy`).
    pub auto_approve: Vec<Permission>,
    /// The Slack channel of this tenant's approval messages (else `SLACK_CHANNEL_ID`).
    pub slack_channel: Option<String>,
    /// The longest access a request may ask for (beside `MAX_ACCESS_DURATION`).
    pub max_duration: Option<Duration>,
    /// The access a request without a `duration` gets (none: permanent).
    pub default_duration: Option<Duration>,
}

impl Default for Rules {
    /// One approval by an admin, nothing automatic: TARS without a policy file.
    fn default() -> Self {
        Self {
            approvers: vec![Approver::Admins],
            read_only_approvals: 1,
            read_write_approvals: 1,
            auto_approve: Vec::new(),
            slack_channel: None,
            max_duration: None,
            default_duration: None,
        }
    }
}

impl Rules {
    /// Distinct approvals a request for `permission` needs.
    pub fn approvals_for(&self, permission: Permission) -> u32 {
        match permission {
            Permission::ReadOnly => self.read_only_approvals,
            Permission::ReadWrite => self.read_write_approvals,
        }
    }

    /// Whether a request for `permission` is approved without a human.
    pub fn auto_approves(&self, permission: Permission) -> bool {
        self.auto_approve.contains(&permission)
    }

    /// Whether `who` may approve or deny under these rules.
    pub fn may_decide(&self, who: &Decider<'_>) -> bool {
        self.approvers.iter().any(|a| match a {
            Approver::User(u) => u == who.username,
            Approver::Role(r) => who.roles.iter().any(|held| held == r),
            Approver::Stewards => who.is_steward,
            Approver::Admins => who.is_admin,
        })
    }

    /// Whether deciding needs the tenant's stewards (a governance lookup).
    pub fn names_stewards(&self) -> bool {
        self.approvers.contains(&Approver::Stewards)
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApprovalPolicy {
    defaults: Rules,
    tenants: BTreeMap<String, Rules>,
}

/// A policy file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct PolicyError {
    /// The file, as given.
    pub file: String,
    /// The line (1-based) the problem is on.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Option<toml::Spanned<Section>>,
    #[serde(default)]
    tenants: BTreeMap<String, toml::Spanned<Section>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    approvers: Option<toml::Spanned<Vec<String>>>,
    approvals: Option<toml::Spanned<Counts>>,
    auto_approve: Option<toml::Spanned<Vec<String>>>,
    slack_channel: Option<toml::Spanned<String>>,
    max_duration: Option<toml::Spanned<String>>,
    default_duration: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Counts {
    read_only: Option<u32>,
    read_write: Option<u32>,
}

impl ApprovalPolicy {
    /// Parses the text of the policy file `file` (named in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |offset: usize, reason: String| PolicyError {
            file: file.to_owned(),
            line: line_of(offset),
            reason,
        };
        let parsed: File = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            err(at, e.message().to_owned())
        })?;
        let base = Rules::default();
        let defaults = match &parsed.defaults {
            Some(d) => section(&base, d.get_ref(), &err)?,
            None => base,
        };
        let mut tenants = BTreeMap::new();
        for (name, s) in &parsed.tenants {
            TenantName::parse(name)
                .map_err(|e| err(s.span().start, format!("[tenants.{name}]: {e}")))?;
            tenants.insert(name.clone(), section(&defaults, s.get_ref(), &err)?);
        }
        Ok(Self { defaults, tenants })
    }

    /// The rules of `tenant`.
    pub fn rules(&self, tenant: &TenantName) -> &Rules {
        self.tenants.get(tenant.as_str()).unwrap_or(&self.defaults)
    }
}

/// One section over `base` (a tenant over the defaults, the defaults over the built-in).
fn section(
    base: &Rules,
    s: &Section,
    err: &impl Fn(usize, String) -> PolicyError,
) -> Result<Rules, PolicyError> {
    let mut r = base.clone();
    if let Some(a) = &s.approvers {
        if a.get_ref().is_empty() {
            return Err(err(a.span().start, "approvers: name at least one".into()));
        }
        r.approvers = a
            .get_ref()
            .iter()
            .map(|x| Approver::parse(x))
            .collect::<Result<_, _>>()
            .map_err(|e| err(a.span().start, format!("approvers: {e}")))?;
    }
    if let Some(c) = &s.approvals {
        let counts = c.get_ref();
        for (name, n) in [
            ("read_only", counts.read_only),
            ("read_write", counts.read_write),
        ] {
            if n == Some(0) {
                return Err(err(
                    c.span().start,
                    format!("approvals.{name}: must be at least 1"),
                ));
            }
        }
        r.read_only_approvals = counts.read_only.unwrap_or(r.read_only_approvals);
        r.read_write_approvals = counts.read_write.unwrap_or(r.read_write_approvals);
    }
    if let Some(a) = &s.auto_approve {
        r.auto_approve = a
            .get_ref()
            .iter()
            .map(|p| p.parse::<Permission>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(a.span().start, format!("auto_approve: {e}")))?;
    }
    if let Some(c) = &s.slack_channel {
        let id = c.get_ref();
        if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err(err(
                c.span().start,
                format!("slack_channel: {id:?} is not a Slack channel id like C0123ABCD"),
            ));
        }
        r.slack_channel = Some(id.clone());
    }
    let duration = |d: &toml::Spanned<String>, name: &str| {
        parse_duration(d.get_ref())
            .and_then(|v| {
                if v.is_zero() {
                    Err("must be more than 0".to_owned())
                } else {
                    Ok(v)
                }
            })
            .map_err(|e| err(d.span().start, format!("{name}: {e}")))
    };
    if let Some(d) = &s.max_duration {
        r.max_duration = Some(duration(d, "max_duration")?);
    }
    if let Some(d) = &s.default_duration {
        r.default_duration = Some(duration(d, "default_duration")?);
    }
    if let (Some(def), Some(max)) = (r.default_duration, r.max_duration)
        && def > max
    {
        match &s.default_duration {
            // Written in the same section: a contradiction.
            Some(d) => {
                return Err(err(
                    d.span().start,
                    "default_duration: longer than max_duration".into(),
                ));
            }
            // Inherited: a tenant with a shorter maximum gets its maximum by default.
            None => r.default_duration = Some(max),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[defaults]
approvers = ["role:CDM_JUPYTERHUB_ADMIN", "stewards"]
approvals = { read_only = 1, read_write = 1 }
max_duration = "90d"
default_duration = "30d"

[tenants.genomics]
approvers = ["alice_pi", "bob_pi"]
approvals = { read_write = 2 }
slack_channel = "C0GENOMICS"
max_duration = "14d"

[tenants.public-data]
auto_approve = ["read_only"]
"#;

    fn tenant(s: &str) -> TenantName {
        TenantName::parse(s).unwrap()
    }

    #[test]
    fn the_design_example_parses_with_tenants_over_defaults() {
        let p = ApprovalPolicy::parse("policy.toml", EXAMPLE).unwrap();
        let g = p.rules(&tenant("genomics"));
        assert_eq!(g.approvals_for(Permission::ReadWrite), 2);
        assert_eq!(g.approvals_for(Permission::ReadOnly), 1);
        assert_eq!(g.slack_channel.as_deref(), Some("C0GENOMICS"));
        assert_eq!(g.max_duration, Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(
            g.default_duration,
            Some(Duration::from_secs(14 * 86_400)),
            "the inherited 30d default is capped by the tenant's 14d maximum"
        );
        let public = p.rules(&tenant("public-data"));
        assert!(public.auto_approves(Permission::ReadOnly));
        assert!(!public.auto_approves(Permission::ReadWrite));
        assert!(public.names_stewards());
        let other = p.rules(&tenant("elsewhere"));
        assert_eq!(other.approvers.len(), 2);
        assert!(!other.auto_approves(Permission::ReadOnly));
    }

    #[test]
    fn no_file_and_no_defaults_mean_one_approval_by_an_admin() {
        let p = ApprovalPolicy::parse("p.toml", "[tenants.x]\nslack_channel = \"C1\"\n").unwrap();
        let r = p.rules(&tenant("y"));
        assert_eq!(r, &Rules::default());
        let admin = Username::parse("root").unwrap();
        let d = Decider {
            username: &admin,
            roles: &[],
            is_admin: true,
            is_steward: false,
        };
        assert!(r.may_decide(&d));
        assert!(!r.may_decide(&Decider {
            is_admin: false,
            ..d
        }));
    }

    #[test]
    fn approvers_are_named_users_role_holders_or_stewards() {
        let p = ApprovalPolicy::parse("policy.toml", EXAMPLE).unwrap();
        let alice = Username::parse("alice_pi").unwrap();
        let carol = Username::parse("carol").unwrap();
        let roles = ["CDM_JUPYTERHUB_ADMIN".to_owned()];
        let who = |u, roles, steward| Decider {
            username: u,
            roles,
            is_admin: false,
            is_steward: steward,
        };
        let g = p.rules(&tenant("genomics"));
        assert!(g.may_decide(&who(&alice, &[], false)));
        assert!(
            !g.may_decide(&who(&carol, &roles, true)),
            "genomics names its approvers"
        );
        let other = p.rules(&tenant("other"));
        assert!(other.may_decide(&who(&carol, &roles, false)));
        assert!(other.may_decide(&who(&carol, &[], true)));
        assert!(!other.may_decide(&who(&carol, &[], false)));
    }

    #[test]
    fn mistakes_are_reported_with_file_line_and_reason() {
        let cases = [
            (
                "[defaults]\napprovers = [\"x\"]\ncolour = 1\n",
                3,
                "unknown field",
            ),
            (
                "[defaults]\n\nmax_duration = \"ninety\"\n",
                3,
                "max_duration",
            ),
            (
                "[tenants.a]\napprovals = { read_write = 0 }\n",
                2,
                "at least 1",
            ),
            ("[tenants.a]\n\n\napprovers = [\"role:\"]\n", 4, "role"),
            (
                "[tenants.a]\nauto_approve = [\"admin\"]\n",
                2,
                "auto_approve",
            ),
            (
                "[tenants.Bad_Name]\napprovers = [\"x\"]\n",
                1,
                "tenants.Bad_Name",
            ),
            ("[defaults]\napprovers = []\n", 2, "at least one"),
            ("[defaults\n", 1, ""),
            (
                "[defaults]\nmax_duration = \"1d\"\ndefault_duration = \"2d\"\n",
                3,
                "longer than max_duration",
            ),
        ];
        for (text, line, says) in cases {
            let e = ApprovalPolicy::parse("/etc/tars/policy.toml", text).unwrap_err();
            assert_eq!(e.file, "/etc/tars/policy.toml");
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(says), "{text:?}: {e}");
        }
    }
}
