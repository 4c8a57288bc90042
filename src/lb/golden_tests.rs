//! Golden tests: each `testdata/lb/<case>.txt` (txtar-like) holds `-- input.yaml --`
//! (Services and EndpointSlices), `-- node.yaml --` (`node_name`, `node_ips`,
//! `nodeport_enabled`) and `-- expected --` (the [`dump`] of the computed state). Text
//! before the first section describes the case. `UPDATE_GOLDEN=1 cargo test` rewrites the
//! expected sections.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::parse::parse_stream;
use super::state::{compute, dump, NodeView};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/lb");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node_name: String,
    #[serde(default)]
    node_ips: Vec<IpAddr>,
    #[serde(default)]
    nodeport_enabled: bool,
}

/// Splits a txtar-like file into its preamble and `(name, content)` sections.
fn sections(text: &str) -> (String, Vec<(String, String)>) {
    let mut preamble = String::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if let Some(name) = t.strip_prefix("-- ").and_then(|r| r.strip_suffix(" --")) {
            out.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
        } else {
            preamble.push_str(line);
        }
    }
    (preamble, out)
}

fn section<'a>(secs: &'a [(String, String)], name: &str) -> Result<&'a str, String> {
    secs.iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_str())
        .ok_or_else(|| format!("no `-- {name} --` section"))
}

fn render(secs: &[(String, String)]) -> Result<String, String> {
    let parsed =
        parse_stream(section(secs, "input.yaml")?).map_err(|e| format!("input.yaml: {e}"))?;
    let node: NodeFile =
        serde_yaml::from_str(section(secs, "node.yaml")?).map_err(|e| format!("node.yaml: {e}"))?;
    let view = NodeView {
        node_name: &node.node_name,
        node_ips: &node.node_ips,
        nodeport_enabled: node.nodeport_enabled,
    };
    let state = compute(&parsed.services, &parsed.slices, &view, None);
    // Recomputing from the state itself must change nothing (ids stay put).
    let again = compute(&parsed.services, &parsed.slices, &view, Some(&state));
    if again != state {
        return Err("recomputing with the previous state changed it".to_string());
    }
    Ok(dump(&state))
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(DIR)
        .expect("testdata/lb exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    v.sort();
    v
}

fn run(path: &Path, update: bool) -> Result<(), String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (preamble, mut secs) = sections(&text);
    let got = render(&secs)?;
    let want = section(&secs, "expected")?;
    if got == want {
        return Ok(());
    }
    if update {
        for (name, body) in &mut secs {
            if name == "expected" {
                body.clone_from(&got);
            }
        }
        let mut out = preamble;
        for (name, body) in &secs {
            out.push_str(&format!("-- {name} --\n{body}"));
        }
        fs::write(path, out).map_err(|e| e.to_string())?;
        return Ok(());
    }
    Err(format!("dump differs\n--- want\n{want}--- got\n{got}"))
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let all = cases();
    assert!(
        all.len() >= 12,
        "expected the golden cases in {DIR}, found {}",
        all.len()
    );
    let mut failures = Vec::new();
    for path in &all {
        if let Err(e) = run(path, update) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
