//! The shipped monitoring files name only metrics TARS exports: every `tars_*` series in
//! the alert rules and the Grafana dashboard is one the metrics registry defines
//! (histograms through their `_bucket`, `_sum` and `_count` series), so a renamed metric
//! cannot leave an alert or a panel silently empty. (`make test-deploy` checks that the
//! queries parse and runs the alerts' unit tests.)

use std::collections::{BTreeMap, BTreeSet};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `tars_…` words of a text.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tars_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len().max(1)..];
        out.insert(word);
    }
    out
}

/// The metric families the registry defines, from the one place they are named.
fn defined() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("common/observability/src/metrics.rs")).unwrap();
    names(&src)
        .into_iter()
        .filter(|n| src.contains(&format!("\"{n}\"")))
        .collect()
}

fn family(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

#[test]
fn alerts_and_the_dashboard_use_only_metrics_tars_exports() {
    let defined = defined();
    assert!(defined.contains("tars_http_requests_total"), "{defined:?}");
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts.test.yaml",
        "deploy/grafana/tars.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let used: BTreeSet<String> = names(&text)
            .into_iter()
            // Recording-rule names the dashboard check makes up are not metrics.
            .filter(|n| !n.starts_with("tars_dashboard_"))
            .collect();
        assert!(!used.is_empty(), "{file} names no TARS metric");
        for series in &used {
            assert!(
                defined.contains(family(series)),
                "{file} uses {series}, which TARS does not export"
            );
        }
    }
}

// ---- The compose file and the manifests against the binaries' real variables ----------

/// The four services: the name they have in docker-compose.yaml and their binary.
const SERVICES: [(&str, &str); 4] = [
    ("ingress", "tars-ingress"),
    ("notifier", "tars-notifier"),
    ("decision", "tars-decision"),
    ("governance-applier", "tars-governance-applier"),
];

/// A binary built beside this test (`cargo test --workspace` builds them all).
fn binary(name: &str) -> std::path::PathBuf {
    tars_tests::service_binary(name)
}

/// The environment variables a binary reads, from its own `--help`.
fn reads(bin: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(binary(bin))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

/// Runs `bin` with only `env` (and an unreachable NATS); the variables its configuration
/// check reports as required. A binary that gets past the check is stopped after 3 s.
fn missing(bin: &str, env: &BTreeSet<String>) -> BTreeSet<String> {
    let mut cmd = std::process::Command::new(binary(bin));
    cmd.env_clear()
        .env("NATS_URL", "nats://127.0.0.1:9")
        .env("TARS_STARTUP_DEADLINE", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for name in env {
        // A value of the right shape for every kind of variable it could be.
        let value = if name.ends_with("_URL") {
            "http://127.0.0.1:9"
        } else if name.ends_with("_FILE") {
            "/dev/null"
        } else {
            "x"
        };
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20)); // polling a child's exit
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.contains(": required"))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect()
}

/// Every variable `bin` requires: found by asking it again with what it asked for, until
/// it asks for nothing new (`GOVERNANCE_TOKEN` is required only once a URL is set).
/// Found once per binary and shared by the compose and the Kubernetes test (a binary
/// that gets past its check costs 3 s a look).
fn required(bin: &str) -> BTreeSet<String> {
    static FOUND: std::sync::Mutex<BTreeMap<String, BTreeSet<String>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut cache = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .entry(bin.to_owned())
        .or_insert_with(|| search_required(bin))
        .clone()
}

fn search_required(bin: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for _ in 0..5 {
        let more = missing(bin, &found);
        if more.is_subset(&found) {
            return found;
        }
        found.extend(more);
    }
    found
}

/// Whether `env` provides `name`, directly or as its `_FILE` form.
fn provides(env: &BTreeSet<String>, name: &str) -> bool {
    env.contains(name) || env.contains(&format!("{name}_FILE"))
}

/// Checks what one deployment file gives a service against the binary.
fn check_env(file: &str, service: &str, bin: &str, env: &BTreeSet<String>) {
    let reads = reads(bin);
    assert!(!reads.is_empty(), "{bin} --help lists no variables");
    for name in env {
        assert!(
            reads.contains(name),
            "{file}: {service} sets {name}, which {bin} does not read"
        );
    }
    for name in required(bin) {
        assert!(
            provides(env, &name),
            "{file}: {service} lacks {name}, which {bin} requires"
        );
    }
}

fn yaml(file: &str) -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    value.apply_merge().unwrap();
    value
}

#[test]
fn the_compose_file_gives_each_service_what_its_binary_reads_and_requires() {
    let compose = yaml("docker-compose.yaml");
    for (service, bin) in SERVICES {
        let spec = &compose["services"][service];
        let command = spec["command"][0].as_str().unwrap();
        assert!(
            command.ends_with(&format!("/{bin}")),
            "compose: {service} runs {command}, not {bin}"
        );
        assert!(
            service == "ingress" || spec.get("ports").is_none(),
            "compose: the worker {service} publishes host ports, so --scale cannot run two"
        );
        let env: BTreeSet<String> = spec["environment"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        check_env("docker-compose.yaml", service, bin, &env);
        // A secret named by a *_FILE variable is mounted into that service.
        let secrets: Vec<&str> = spec["secrets"]
            .as_sequence()
            .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for (name, value) in spec["environment"].as_mapping().unwrap() {
            let (name, value) = (name.as_str().unwrap(), value.as_str().unwrap_or(""));
            if let Some(secret) = value.strip_prefix("/run/secrets/") {
                assert!(
                    secrets.contains(&secret),
                    "compose: {service}'s {name} names the secret {secret}, not mounted"
                );
            }
        }
    }
    // The stand-ins run the tars-standins binary with variables it reads.
    let standins = &compose["services"]["standins"];
    assert_eq!(standins["profiles"][0].as_str(), Some("standins"));
    let env: BTreeSet<String> = standins["environment"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    check_env("docker-compose.yaml", "standins", "tars-standins", &env);
}

/// `${NAME…}` references of a text.
fn interpolated(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn env_sample_lists_exactly_the_variables_the_compose_file_reads() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yaml")).unwrap();
    let used = interpolated(&compose);
    assert!(used.contains("SLACK_API_URL"), "{used:?}");
    let sample = std::fs::read_to_string(root().join(".env.sample")).unwrap();
    let mut listed = BTreeSet::new();
    let mut comment = false;
    for line in sample.lines() {
        if line.starts_with('#') {
            comment = true;
        } else if let Some((name, _)) = line.split_once('=') {
            assert!(comment, ".env.sample: {name} has no comment above it");
            listed.insert(name.to_owned());
        } else {
            comment = false;
        }
    }
    assert_eq!(listed, used, ".env.sample and docker-compose.yaml disagree");
}

// ---- A real Prometheus with the shipped scrape configuration -------------------------

/// A Prometheus server, stopped on drop.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// deploy/prometheus/prometheus.yml as shipped, but each job's DNS discovery (compose
/// service names) replaced by the loopback port the test runs that service on, scraping
/// every second, and the rule file found beside it.
fn scrape_config(ports: &[(&str, u16)]) -> String {
    let mut config = yaml("deploy/prometheus/prometheus.yml");
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    assert_eq!(jobs.len(), ports.len(), "one job per service");
    for job in jobs.iter_mut() {
        let name = job["job_name"].as_str().unwrap().to_owned();
        let port = ports
            .iter()
            .find(|(j, _)| *j == name)
            .unwrap_or_else(|| panic!("prometheus.yml has a job {name} for no service"))
            .1;
        let map = job.as_mapping_mut().unwrap();
        assert!(
            map.remove("dns_sd_configs").is_some(),
            "{name}: not found by DNS"
        );
        map.insert(
            "static_configs".into(),
            serde_yaml_ng::from_str(&format!("[{{targets: ['127.0.0.1:{port}']}}]")).unwrap(),
        );
        map.insert("scrape_interval".into(), "1s".into());
    }
    config["rule_files"][0] = root()
        .join("deploy/prometheus/alerts.yaml")
        .display()
        .to_string()
        .into();
    serde_yaml_ng::to_string(&config).unwrap()
}

/// The series the dashboard's queries name.
fn dashboard_series() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/tars.json")).unwrap();
    names(&text)
}

#[tokio::test]
async fn a_real_prometheus_with_the_shipped_config_scrapes_every_metric_the_dashboard_queries() {
    use crate::stack::{BOT_TOKEN, CHANNEL, Options, Stack, common, wait_status};
    use crate::support::eventually;
    use std::time::Duration;
    use tars_observability::metrics::Metrics;

    let Some(prometheus_bin) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("no prometheus binary: `make test` installs Debian's prometheus package");
    };
    let s = Stack::start(Options::default()).await;
    let url = s.nats.server.url();
    let worker = |port: u16| tars_jetstream::config::WorkerArgs {
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
        ..tars_jetstream::config::WorkerArgs::on(([127, 0, 0, 1], port).into())
    };
    let ports = [
        ("tars-notifier", tars_testkit::nats_server::free_port()),
        ("tars-decision", tars_testkit::nats_server::free_port()),
        (
            "tars-governance-applier",
            tars_testkit::nats_server::free_port(),
        ),
    ];
    let stop = s.shutdown_token();
    let notifier = tars_notifier::Args {
        common: common(&url),
        worker: worker(ports[0].1),
        slack_bot: tars_slack::config::SlackBotArgs::new(BOT_TOKEN, &s.slack.url()),
        slack_channel_id: Some(CHANNEL.into()),
        slack_max_posts_per_second: None,
        slack_timeout: Duration::from_secs(10),
    };
    tokio::spawn(tars_notifier::run(notifier, Metrics::new(), stop.clone()));
    let decision = tars_decision::Args {
        sweep_interval: Duration::from_millis(200),
        ..tars_decision::Args::new(common(&url), worker(ports[1].1))
    };
    tokio::spawn(tars_decision::run(decision, Metrics::new(), stop.clone()));
    let applier = tars_governance_applier::Args {
        worker: worker(ports[2].1),
        ..s.applier_args()
    };
    tokio::spawn(tars_governance_applier::run(
        applier,
        Metrics::new(),
        stop.clone(),
    ));

    // Traffic that moves every series the dashboard shows: a Slack 429, a governance 500
    // that is retried, a governance refusal that is dead-lettered, a DM to the requester.
    s.slack.add_user("alice@example.org", "U_ALICE");
    s.slack.faults().rate_limit_next(1, 1);
    let applied = s.submit("scraped", "read_only").await;
    s.governance.faults().fail_next(1, 500);
    s.approve(&applied).await;
    wait_status(&s, &applied, "applied").await;
    let refused = s.submit("refused", "read_only").await;
    s.governance.faults().fail_next(1, 403);
    s.approve(&refused).await;
    wait_status(&s, &refused, "failed").await;

    let ingress_port: u16 = s.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut jobs = vec![("tars-ingress", ingress_port)];
    jobs.extend(ports);
    let dir = tars_testkit::nats_server::temp_dir("tars-prometheus");
    std::fs::write(dir.join("prometheus.yml"), scrape_config(&jobs)).unwrap();
    let web = tars_testkit::nats_server::free_port();
    let _prometheus = Prometheus(
        std::process::Command::new(prometheus_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let api = |path: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(format!("http://127.0.0.1:{web}/api/v1/{path}"))
                .send()
                .await
                .ok()?;
            resp.json::<serde_json::Value>().await.ok()
        }
    };
    // All four jobs up, through the shipped job names.
    eventually(Duration::from_secs(30), "all four targets up", || async {
        let body = api("targets".into()).await?;
        let up: BTreeSet<String> = body["data"]["activeTargets"]
            .as_array()?
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["job"].as_str().map(str::to_owned))
            .collect();
        (up.len() == 4).then_some(())
    })
    .await;
    // The alert rules loaded beside the scrape configuration.
    let rules = api("rules".into()).await.unwrap();
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(loaded, 7, "{rules}");
    for series in dashboard_series() {
        eventually(
            Duration::from_secs(30),
            &format!("Prometheus to have scraped {series}"),
            || async {
                let body = api(format!("query?query=count({series})")).await?;
                (!body["data"]["result"].as_array()?.is_empty()).then_some(())
            },
        )
        .await;
    }
}

#[test]
fn each_kubernetes_deployment_gets_what_its_binary_reads_and_requires() {
    let dir = root().join("deploy/kubernetes/base");
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if object["kind"].as_str() != Some("Deployment") {
                continue;
            }
            let name = object["metadata"]["name"].as_str().unwrap().to_owned();
            let containers = object["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap();
            assert_eq!(containers.len(), 1, "{name}: one container");
            let container = &containers[0];
            let command = container["command"][0].as_str().unwrap();
            let (_, bin) = SERVICES
                .iter()
                .find(|(_, bin)| command.ends_with(&format!("/{bin}")))
                .unwrap_or_else(|| panic!("{name} runs {command}, no TARS service"));
            assert!(
                container.get("envFrom").is_none(),
                "{name}: envFrom hides which variables it gets"
            );
            let env: BTreeSet<String> = container["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect();
            check_env(&path.display().to_string(), &name, bin, &env);
            seen.insert(*bin);
        }
    }
    assert_eq!(
        seen.len(),
        SERVICES.len(),
        "a Deployment per service: {seen:?}"
    );
}
