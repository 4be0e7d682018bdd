//! ARCHITECTURE.md is the map a newcomer follows to find a behaviour, so it must stay true:
//! every module of every crate is named in it, and every repository path it names exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The text between single backticks, outside fenced code blocks.
fn code_spans(doc: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push(inside.to_owned());
        }
        // A span left open at the end of the line is not one.
    }
    spans
}

/// The words of the spans: `a::b`, `x/y.rs` and `name` stay whole.
fn words(spans: &[String]) -> BTreeSet<String> {
    spans
        .iter()
        .flat_map(|span| {
            span.split(|c: char| !(c.is_ascii_alphanumeric() || "_-/.:*".contains(c)))
                .map(|w| w.trim_end_matches(['.', ',', ':']).to_owned())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every module file under `crates/*/src` and `chaos/src` (not the crate roots), relative
/// to the repository root, with its module name.
fn modules() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut sources);
        }
    }
    walk(&root.join("chaos/src"), &mut sources);
    let mut out = Vec::new();
    for path in sources {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "lib" || stem == "main" {
            continue;
        }
        let name = if stem == "mod" {
            let dir = path.parent().unwrap().file_name().unwrap();
            dir.to_string_lossy().into_owned()
        } else {
            stem
        };
        let relative = path.strip_prefix(&root).unwrap_or(&path);
        out.push((relative.display().to_string(), name));
    }
    out.sort();
    out
}

fn document() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap()
}

#[test]
fn every_module_is_named() {
    let words = words(&code_spans(&document()));
    let named = |name: &str| {
        words.iter().any(|w| {
            w == name
                || w.starts_with(&format!("{name}::"))
                || w.ends_with(&format!("::{name}"))
                || w.ends_with(&format!("/{name}"))
                || w.ends_with(&format!("{name}.rs"))
        })
    };
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|(_, name)| !named(name))
        .map(|(path, name)| format!("`{name}` ({path})"))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names no module {}: say in a line what each does",
        missing.join(", ")
    );
}

#[test]
fn every_path_it_names_exists() {
    let root = root();
    let exists = |path: &str| match path.split_once('*') {
        // `dir/prefix_*`: some entry of dir starts with prefix.
        Some((before, _)) => {
            let (dir, prefix) = before.rsplit_once('/').unwrap_or(("", before));
            std::fs::read_dir(root.join(dir)).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
        }
        None => root.join(path).exists(),
    };
    let tops = ["crates/", "chaos/", "deploy/", "bench/", "tests/", ".ci/"];
    let missing: Vec<String> = words(&code_spans(&document()))
        .into_iter()
        .filter(|w| tops.iter().any(|t| w.starts_with(t)))
        .filter(|w| !exists(w))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist (from the repository root): {missing:?}"
    );
}

#[test]
fn the_checks_see_what_they_check() {
    let spans = code_spans("a `x` b\n```\n`no`\n```\n`y::z` and `half");
    assert_eq!(spans, ["x", "y::z"]);
    let modules = modules();
    assert!(
        modules
            .iter()
            .any(|(path, name)| name == "handler" && path.ends_with("portico-proxy/src/handler.rs"))
    );
    assert!(modules.iter().any(|(_, name)| name == "transport"));
}
