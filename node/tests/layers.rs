//! The node's modules depend one way (README "Design notes"): every `crate::` path in `src/` may name
//! only modules of its own layer or below. This test reads the sources, so a new import that runs
//! upwards fails here, in CI, before it becomes a knot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Pure building blocks: protocol types and codecs, cryptography, time, the CPU pool, test vectors.
const PURE: &[&str] = &["wire", "crypto", "bloom", "clock", "cpu", "testdata"];
/// Beside the main chain, below `client/`: configuration, who may do what, entry checks, figures.
const SIDE: &[&str] = &["config", "directory", "auth", "ingest", "metrics", "status"];

/// The main chain, bottom up: each names those below it.
const CHAIN: &[&str] = &["store", "client", "sync", "roles", "server"];
/// On top, free to name anything: start-up, the crate root, CLI, demo, tools, backup.
const TOP: &[&str] = &["node", "lib", "main", "demo", "tools", "backup"];

/// The modules a top-level module may name, or `None` for the top. A module in no list fails the
/// test: a new module takes its place in the layers when it is written.
fn allowed(module: &str) -> Option<BTreeSet<&'static str>> {
    if TOP.contains(&module) {
        return None;
    }
    let mut set: BTreeSet<&'static str> = PURE.iter().copied().collect();
    if PURE.contains(&module) {
        return Some(set);
    }
    set.insert("store");
    if module == "store" {
        return Some(set);
    }
    set.extend(SIDE);
    if SIDE.contains(&module) {
        return Some(set);
    }
    let rank = CHAIN
        .iter()
        .position(|c| *c == module)
        .unwrap_or_else(|| panic!("module {module} has no place in tests/layers.rs"));
    set.extend(&CHAIN[..=rank]);
    Some(set)
}

/// The top-level modules a source text names through `crate::` (comments skipped), including
/// grouped imports such as `use crate::{a::b, c};`.
fn named_modules(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != "self" {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn reading_imports_finds_single_and_grouped_paths() {
    let text = "use crate::{server::x, wire};\nuse crate::store::Y; // crate::sync in a comment\nlet z = crate::clock::now_ms();";
    let found = named_modules(text);
    let expected: BTreeSet<String> = ["server", "wire", "store", "clock"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn the_rules_forbid_what_the_issue_names() {
    let store = allowed("store").unwrap();
    for upper in ["sync", "client", "server", "metrics", "roles"] {
        assert!(!store.contains(upper), "store may not name {upper}");
    }
    for lower in ["roles", "sync", "client", "store", "wire", "crypto"] {
        assert!(!allowed(lower).unwrap().contains("server"));
    }
    for side in SIDE {
        assert!(!allowed(side).unwrap().contains("server"));
        assert!(!allowed(side).unwrap().contains("client"));
    }
    assert!(allowed("server").unwrap().contains("roles"));
    assert!(allowed("node").is_none());
}

#[test]
fn every_module_names_only_its_layer_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 40, "found only {} source files", files.len());
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("module name");
        let Some(allowed) = allowed(&module) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).expect("reading source");
        for named in named_modules(&text) {
            if named != module && !allowed.contains(named.as_str()) {
                violations.push(format!("{} names crate::{named}", relative.display()));
            }
        }
    }
    assert!(checked > 30, "checked only {checked} files");
    assert!(
        violations.is_empty(),
        "imports that run upwards:\n  {}",
        violations.join("\n  ")
    );
}
