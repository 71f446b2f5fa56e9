//! The crate graph, read from `cargo metadata`: dependencies point one way (services →
//! clients and runtime → domain), the domain does no I/O, and the README's graph is the
//! real one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Normal (not dev or build) dependencies of every workspace crate, by package name.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

fn tars_only(deps: &BTreeSet<String>) -> BTreeSet<String> {
    deps.iter()
        .filter(|d| d.starts_with("tars-"))
        .cloned()
        .collect()
}

const FOUNDATION: [&str; 2] = ["tars-domain", "tars-observability"];
const CLIENTS_AND_RUNTIME: [&str; 4] = [
    "tars-jetstream",
    "tars-slack",
    "tars-kbase",
    "tars-governance",
];
const SERVICES: [&str; 4] = [
    "tars-ingress",
    "tars-notifier",
    "tars-decision",
    "tars-governance-applier",
];

#[test]
fn dependencies_point_one_way() {
    let graph = workspace_graph();
    let deps_of = |name: &str| {
        tars_only(
            graph
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in the workspace")),
        )
    };
    for c in FOUNDATION {
        assert!(deps_of(c).is_empty(), "{c} depends on {:?}", deps_of(c));
    }
    for c in CLIENTS_AND_RUNTIME {
        for d in deps_of(c) {
            assert!(FOUNDATION.contains(&d.as_str()), "{c} depends on {d}");
        }
    }
    // The stand-ins may share a client's wire code (Slack signatures), never a service's.
    for c in SERVICES.iter().chain(["tars-testkit"].iter()) {
        for d in deps_of(c) {
            assert!(
                FOUNDATION.contains(&d.as_str()) || CLIENTS_AND_RUNTIME.contains(&d.as_str()),
                "service {c} depends on {d}: a service imports no other service, nor the stand-ins"
            );
        }
    }
    for (c, deps) in &graph {
        if deps.contains("tars-testkit") {
            assert!(
                ["tars-dev", "tars-tests"].contains(&c.as_str()),
                "{c} depends on the test kit outside its tests"
            );
        }
    }
}

#[test]
fn the_domain_does_no_io() {
    let graph = workspace_graph();
    let domain = &graph["tars-domain"];
    for io in [
        "tokio",
        "async-nats",
        "reqwest",
        "axum",
        "hyper",
        "tower",
        "futures",
    ] {
        assert!(!domain.contains(io), "tars-domain depends on {io}");
    }
}

/// The README's crate graph: the lines of the fenced block after the
/// `<!-- crate graph -->` marker, each `crate → dep, dep` (or `→ none`).
fn readme_graph() -> BTreeMap<String, BTreeSet<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = readme
        .split_once("<!-- crate graph -->")
        .expect("README has a <!-- crate graph --> block")
        .1;
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced block follows the marker");
    block
        .lines()
        .filter_map(|l| l.split_once('→'))
        .map(|(name, deps)| {
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "none")
                .map(str::to_owned)
                .collect();
            (name.trim().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_readme_shows_the_real_crate_graph() {
    let real: BTreeMap<String, BTreeSet<String>> = workspace_graph()
        .iter()
        .map(|(k, v)| (k.clone(), tars_only(v)))
        .collect();
    assert_eq!(readme_graph(), real);
}
