//! The NATS Helm values TARS ships (`deploy/nats/values.yaml`), read at test time and
//! turned into the cluster the tests start: the node count from `config.cluster.replicas`,
//! every key of `config.merge` at the top level of each node's `nats.conf` and every key of
//! `config.jetstream.merge` in its `jetstream { }` block, rendered as the chart renders
//! them (JSON, which nats-server reads as its own syntax).

use serde_yaml_ng::Value;
use tars_testkit::nats_server::{ClusterSettings, ServerSettings};

/// The shipped values file.
pub const VALUES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/values.yaml");

/// The cluster `deploy/nats/values.yaml` describes; panics, naming the file and the key,
/// when it cannot be read or a setting cannot be rendered.
pub fn shipped(isolated: bool) -> ClusterSettings {
    let text = std::fs::read_to_string(VALUES).unwrap_or_else(|e| panic!("read {VALUES}: {e}"));
    let mut settings = settings_from(&text).unwrap_or_else(|e| panic!("{VALUES}: {e}"));
    settings.isolated = isolated;
    settings
}

/// The cluster settings in the text of a values file.
pub fn settings_from(text: &str) -> Result<ClusterSettings, String> {
    let values: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let config = values.get("config").ok_or("no `config`")?;
    let enabled = |path: &str, v: Option<&Value>| match v.and_then(|e| e.get("enabled")) {
        Some(Value::Bool(true)) => Ok(()),
        other => Err(format!(
            "`{path}.enabled` is {other:?}; TARS needs it true (and these tests assume it)"
        )),
    };
    enabled("config.cluster", config.get("cluster"))?;
    enabled("config.jetstream", config.get("jetstream"))?;
    let replicas = config
        .get("cluster")
        .and_then(|c| c.get("replicas"))
        .ok_or("no `config.cluster.replicas`")?;
    let nodes = replicas
        .as_u64()
        .filter(|n| (1..=9).contains(n))
        .ok_or_else(|| format!("`config.cluster.replicas` is {replicas:?}, not a node count"))?
        as usize;
    let server = ServerSettings {
        top_level: merge_map("config.merge", config.get("merge"))?,
        jetstream: merge_map(
            "config.jetstream.merge",
            config.get("jetstream").and_then(|j| j.get("merge")),
        )?,
    };
    Ok(ClusterSettings {
        nodes,
        server,
        isolated: false,
    })
}

/// Every `key: value` of one `merge` map, the value rendered as nats.conf; none when the
/// map is absent.
fn merge_map(path: &str, map: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let map = match map {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Mapping(m)) => m,
        Some(other) => return Err(format!("`{path}` is not a map: {other:?}")),
    };
    map.iter()
        .map(|(k, v)| {
            let key = k
                .as_str()
                .ok_or_else(|| format!("`{path}` has a key that is not a string: {k:?}"))?;
            let at = format!("{path}.{key}");
            if key.starts_with('$') || key.trim().is_empty() {
                return Err(format!(
                    "cannot render `{at}`: the chart treats `$…` keys (`$include`) specially"
                ));
            }
            Ok((key.to_owned(), render(&at, v)?))
        })
        .collect()
}

/// A value as the chart writes it: JSON. Refuses what the chart would render differently
/// (its `<< $VAR >>` variables and `tplYaml` templates) and what has no nats.conf value
/// (null, YAML tags).
fn render(at: &str, v: &Value) -> Result<String, String> {
    check(at, v)?;
    let json = serde_json::to_value(v).map_err(|e| format!("cannot render `{at}`: {e}"))?;
    serde_json::to_string(&json).map_err(|e| format!("cannot render `{at}`: {e}"))
}

fn check(at: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Null => Err(format!("cannot render `{at}`: it has no value (null)")),
        Value::Tagged(t) => Err(format!(
            "cannot render `{at}`: YAML tag {} has no nats.conf form",
            t.tag
        )),
        Value::String(s) if s.trim_start().starts_with("<<") => Err(format!(
            "cannot render `{at}`: {s:?} is a chart variable, written unquoted from the environment"
        )),
        Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => {
            Err(format!("cannot render `{at}`: {n} is not a finite number"))
        }
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check(&format!("{at}[{i}]"), item)),
        Value::Mapping(m) => m.iter().try_for_each(|(k, item)| {
            let key = k
                .as_str()
                .ok_or_else(|| format!("cannot render `{at}`: key {k:?} is not a string"))?;
            if key == "tplYaml" || key == "tplYamlSpread" {
                return Err(format!(
                    "cannot render `{at}`: `{key}` is a chart template, rendered by Helm"
                ));
            }
            check(&format!("{at}.{key}"), item)
        }),
        _ => Ok(()),
    }
}

#[test]
fn the_shipped_values_render_into_both_blocks() {
    let text = std::fs::read_to_string(VALUES).unwrap();
    let s = settings_from(&text).unwrap();
    assert_eq!(s.nodes, 3);
    let keys = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        keys(&s.server.jetstream),
        ["sync_interval", "max_file_store"]
    );
    assert_eq!(
        keys(&s.server.top_level),
        [
            "max_payload",
            "lame_duck_duration",
            "lame_duck_grace_period"
        ]
    );
    assert!(
        s.server
            .jetstream
            .contains(&("sync_interval".into(), "\"always\"".into()))
    );
    assert!(
        s.server
            .top_level
            .contains(&("max_payload".into(), "1048576".into()))
    );
}

#[test]
fn a_value_that_cannot_be_rendered_is_named() {
    let with = |merge: &str| {
        settings_from(&format!(
            "config:\n  cluster: {{enabled: true, replicas: 3}}\n  jetstream:\n    enabled: true\n  merge:\n{merge}"
        ))
    };
    for (merge, names) in [
        ("    max_payload:\n", "config.merge.max_payload"),
        ("    token: << $TOKEN >>\n", "config.merge.token"),
        ("    $include: auth.conf\n", "config.merge.$include"),
        (
            "    accounts:\n      A:\n        tplYaml: x\n",
            "config.merge.accounts.A",
        ),
        ("    1: x\n", "not a string"),
        ("    x: !Thing 1\n", "config.merge.x"),
    ] {
        let e = with(merge).unwrap_err();
        assert!(e.contains(names), "{merge:?}: {e}");
    }
    assert_eq!(
        with("    max_payload: 10\n")
            .unwrap()
            .server
            .top_level
            .len(),
        1
    );
    assert!(
        settings_from(
            "config:\n  cluster: {enabled: true, replicas: three}\n  jetstream: {enabled: true}\n"
        )
        .unwrap_err()
        .contains("config.cluster.replicas")
    );
}
