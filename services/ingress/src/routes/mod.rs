//! One module per group of routes.

pub mod admin;
pub mod approvals;
pub mod requests;
pub mod slack;
