//! The access-request domain of TARS, with no I/O: the words (newtypes parsed once at
//! the edge), the request record, the event envelope, and the state machine that decides
//! how a request moves.
//!
//! | module | why it exists |
//! |---|---|
//! | [`ids`] | tenant names, usernames, request ids, permissions, justifications: parsed once, legal as KV keys and subject tokens |
//! | [`record`] | the request record and its statuses |
//! | [`events`] | the versioned event envelope of `TARS_EVENTS` |
//! | [`lease`] | the notifier's posting lease: claim, renew, release, keep, fenced by the attempt's name |
//! | [`machine`] | `(record, command, now, policy) → (record', effects) | refusal`: every lifecycle rule, in one place |
//! | [`policy`] | the approval policy file: approvers per tenant, N-of-M, auto-approval, channels, durations |
//! | [`duration`] | humantime durations (`90s`, `12h`, `7d`) for configuration and requests |
//!
//! This crate depends on no async runtime, no NATS and no HTTP client, so every rule is
//! tested by plain (and property) tests, and every other crate builds on it.

pub mod duration;
pub mod events;
pub mod ids;
pub mod lease;
pub mod machine;
pub mod policy;
pub mod record;

pub use ids::{Justification, ParseError, Permission, RequestId, TenantName, Username};
pub use record::{
    ApprovalMark, Outgoing, RequestRecord, RequestStatus, SlackClaim, SlackMessageRef, Source, now,
};
