//! The ingress: the only door into TARS (REST and Slack callbacks → NATS).
