//! The words of the access-request domain, each parsed once at the edge.
//!
//! Every value that arrives from outside (a tenant name in a JSON body, a username from
//! KBase, a request id in a URL) becomes one of these newtypes before any other code sees
//! it, so the rest of TARS never re-validates and a KV key or NATS subject built from them
//! is always legal.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

/// Why a value from outside was refused; the message names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    /// The name of the field as the client sent it.
    pub field: &'static str,
    /// What rule the value broke, written for the person who sent it.
    pub reason: String,
}

impl ParseError {
    /// A refusal of `field` for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }
    };
}

string_newtype!(
    /// A lakehouse tenant: 1–64 of `[a-z0-9_-]`, starting with a letter or digit, so it is
    /// safe in a governance URL path, a KV key and a NATS subject token.
    TenantName
);

impl TenantName {
    /// Parses a tenant name as a user typed it (surrounding blanks are trimmed).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if s.is_empty() || s.len() > 64 {
            return Err(ParseError::new("tenant_name", "must be 1 to 64 characters"));
        }
        if !s.chars().all(ok_char) {
            return Err(ParseError::new(
                "tenant_name",
                "may contain only lowercase letters, digits, '_' and '-'",
            ));
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(ParseError::new(
                "tenant_name",
                "must start with a letter or digit",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

string_newtype!(
    /// A KBase username as the auth service reports it; used as a KV key segment and in
    /// governance URLs, so only `[A-Za-z0-9_.-]` (1–100) is accepted.
    Username
);

impl Username {
    /// Parses a username from KBase, Slack mapping or a legacy request body.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() || s.len() > 100 {
            return Err(ParseError::new("username", "must be 1 to 100 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(ParseError::new(
                "username",
                "may contain only letters, digits, '_', '-' and '.'",
            ));
        }
        if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
            return Err(ParseError::new("username", "has a misplaced '.'"));
        }
        Ok(Self(s.to_owned()))
    }
}

string_newtype!(
    /// The id of one access request: a UUIDv7, so ids sort by creation time and are legal
    /// as KV keys and subject tokens.
    RequestId
);

impl RequestId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// When the id was made: UUIDv7 carries its creation time, so stale requests can be
    /// found from their ids alone.
    pub fn created_at(&self) -> Option<OffsetDateTime> {
        let (secs, nanos) = uuid::Uuid::parse_str(&self.0)
            .ok()?
            .get_timestamp()?
            .to_unix();
        let t = OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
        Some(t + time::Duration::nanoseconds(i64::from(nanos)))
    }

    /// Parses an id from a URL or a Slack button value: only the canonical spelling
    /// TARS hands out (lowercase, hyphenated), so one request has one id and one KV key;
    /// `urn:uuid:…`, `{…}`, unhyphenated or uppercase spellings are refused.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let refuse = || ParseError::new("request_id", "is not a request id");
        let id = uuid::Uuid::try_parse(raw).map_err(|_| refuse())?;
        let canonical = id.hyphenated().to_string();
        if canonical != raw {
            return Err(refuse());
        }
        Ok(Self(canonical))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// The access a request asks for; it decides which governance group the user joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read access: membership of the tenant's `ro` group.
    #[default]
    ReadOnly,
    /// Read and write access: membership of the tenant's own group.
    ReadWrite,
}

impl Permission {
    /// The wire spelling, as the notebook client sends it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::ReadWrite => "read_write",
        }
    }

    /// The governance group that grants this permission on `tenant`.
    pub fn group_for(self, tenant: &TenantName) -> String {
        match self {
            Self::ReadOnly => format!("{}ro", tenant.as_str()),
            Self::ReadWrite => tenant.as_str().to_owned(),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Permission {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "read_only" => Ok(Self::ReadOnly),
            "read_write" => Ok(Self::ReadWrite),
            _ => Err(ParseError::new(
                "permission",
                "must be \"read_only\" or \"read_write\"",
            )),
        }
    }
}

/// The requester's reason, shown to approvers; trimmed and bounded so a Slack message and
/// a KV record stay small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Justification(String);

impl Justification {
    /// The longest justification accepted, in characters.
    pub const MAX_CHARS: usize = 2_000;

    /// Trims and checks the length; an empty text means "no justification".
    pub fn parse(raw: &str) -> Result<Option<Self>, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(None);
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(ParseError::new(
                "justification",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        Ok(Some(Self(s.to_owned())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Justification {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(Self(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tenant_names_follow_the_rule() {
        assert!(TenantName::parse("kbase").is_ok());
        assert_eq!(TenantName::parse("  ab_c-1 ").unwrap().as_str(), "ab_c-1");
        for bad in ["", "-x", "_x", "Upper", "a.b", "a b", &"x".repeat(65)] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn permissions_map_to_groups() {
        let t = TenantName::parse("globalusers").unwrap();
        assert_eq!(Permission::ReadOnly.group_for(&t), "globalusersro");
        assert_eq!(Permission::ReadWrite.group_for(&t), "globalusers");
        assert!("admin".parse::<Permission>().is_err());
    }

    #[test]
    fn justification_is_trimmed_and_bounded() {
        assert_eq!(Justification::parse("  ").unwrap(), None);
        assert_eq!(
            Justification::parse(" why ").unwrap().unwrap().as_str(),
            "why"
        );
        assert!(Justification::parse(&"é".repeat(2_000)).is_ok());
        assert!(Justification::parse(&"é".repeat(2_001)).is_err());
    }

    #[test]
    fn request_ids_round_trip_and_know_their_age() {
        let before = OffsetDateTime::now_utc() - time::Duration::milliseconds(2);
        let id = RequestId::new();
        assert_eq!(RequestId::parse(id.as_str()).unwrap(), id);
        let made = id.created_at().unwrap();
        assert!(
            made >= before && made <= OffsetDateTime::now_utc(),
            "{made}"
        );
        assert!(RequestId::parse("../etc").is_err());
    }

    #[test]
    fn finding_5_only_the_canonical_uuid_spelling_is_a_request_id() {
        let id = RequestId::new();
        let s = id.as_str();
        assert_eq!(RequestId::parse(s).unwrap(), id);
        for odd in [
            format!("urn:uuid:{s}"),
            format!("{{{s}}}"),
            s.replace('-', ""),
            s.to_ascii_uppercase(),
            format!(" {s} "),
        ] {
            assert!(RequestId::parse(&odd).is_err(), "{odd:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn any_valid_tenant_is_a_legal_subject_token(s in "[a-z0-9][a-z0-9_-]{0,63}") {
            let t = TenantName::parse(&s).unwrap();
            prop_assert!(!t.as_str().contains(['.', '*', '>', ' ']));
        }

        #[test]
        fn usernames_never_contain_subject_wildcards(s in "\\PC{0,120}") {
            if let Ok(u) = Username::parse(&s) {
                prop_assert!(!u.as_str().contains(['*', '>', ' ', '/']));
            }
        }
    }
}
