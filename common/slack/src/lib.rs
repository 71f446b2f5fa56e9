//! Everything Slack: request signatures, the Web API client, the Block Kit messages and
//! the bot settings.
//!
//! | module | why it exists |
//! |---|---|
//! | [`signature`] | v0 signature checks on the raw body, in constant time |
//! | [`client`] | `chat.postMessage`, `chat.update`, `views.open`, `users.lookupByEmail`, with a shared per-channel rate-limit gate |
//! | [`blocks`] | the message of one request, rendered from its current record |
//! | [`notices`] | the requester's DMs and the reminders in a request's thread |
//! | [`config`] | `SLACK_BOT_TOKEN` (or its `_FILE`) and `SLACK_API_URL` |

pub mod blocks;
pub mod client;
pub mod config;
pub mod notices;
pub mod signature;

pub use client::{Lookup, PostTurn, Posted, SlackClient, SlackError};
