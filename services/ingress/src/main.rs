//! `tars-ingress`.

fn main() {}
