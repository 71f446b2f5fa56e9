//! Everything Slack: request signatures, the Web API client and the Block Kit messages.

pub mod blocks;
pub mod client;
pub mod signature;

pub use client::{Posted, SlackClient, SlackError};
