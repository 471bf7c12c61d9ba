//! The architecture as a test: no dependency cycles between the top-level
//! modules of any crate, and thin `main.rs` files.
//!
//! A module's dependencies are the `crate::X` paths in its code (comments and
//! its `#[cfg(test)] mod tests` excluded, test-only files skipped). A cycle
//! means two concerns cannot be understood or changed apart; the fix is
//! usually a small module holding the contract both sides share (as
//! `hub/src/outbox.rs` does for the hub and its publisher).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["protocol", "oci", "runtime", "hub", "edge-agent", "sim"];
/// Lines a `main.rs` may have: argument parsing lives in the library's CLI module.
const THIN_MAIN: usize = 250;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its code names.
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = repo().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path")
            .trim_end_matches(".rs")
            .to_string();
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if top == "main" || top == "lib" || matches!(stem, "tests" | "props") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let code: String = text
            .lines()
            .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        let graph = w.graph;
        for next in graph.get(v).into_iter().flatten() {
            let Some((next, _)) = graph.get_key_value(next.as_str()) else {
                continue;
            };
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let l = w.low[v].min(w.low[next]);
                w.low.insert(v, l);
            } else if w.stack.contains(&next) {
                let l = w.low[v].min(w.index[next]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(m) = w.stack.pop() {
                component.push(m.to_string());
                if m == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}

#[test]
fn no_crate_has_a_dependency_cycle_between_its_modules() {
    let mut found = Vec::new();
    for krate in CRATES {
        let graph = module_graph(krate);
        assert!(graph.len() > 1, "{krate}: no modules found");
        for cycle in cycles(&graph) {
            found.push(format!("{krate}: {}", cycle.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles: {found:#?}");
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut members = found[0].clone();
    members.sort();
    assert_eq!(members, ["a", "b", "c"]);
}

#[test]
fn main_files_stay_thin() {
    for krate in CRATES {
        let main = repo().join(krate).join("src/main.rs");
        if let Ok(text) = std::fs::read_to_string(&main) {
            let lines = text.lines().count();
            assert!(
                lines <= THIN_MAIN,
                "{} has {lines} lines (limit {THIN_MAIN})",
                main.display()
            );
        }
    }
}
