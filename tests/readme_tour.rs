//! Keeps the documentation true: every file the README and `docs/*.md` name (`src/...`,
//! `tests/...`, `docs/...`) exists, and every `Type::function` or `module::function` they name is
//! defined in `src/`.
//!
//! The index is built by reading the sources as text: for each `impl Type` (or `impl Trait for
//! Type`) block, the `fn`s inside it; for each module file, its free `fn`s. It is not a parser,
//! only strict enough that a renamed or removed function makes this test fail.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders the tests and tools create as they run, not kept in the repository.
const GENERATED: &[&str] = &["tests/browser/artifacts/"];

/// Crates whose items the documentation may name; they are not this project's to check.
const EXTERNAL: &[&str] = &[
    "mio",
    "std",
    "tungstenite",
    "signal_hook_mio",
    "serde_json",
    "rustls",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The type an `impl` line is for: `impl<'a> Trait for Type<'a> {` gives `Type`.
fn impl_type(line: &str) -> Option<String> {
    let rest = line.strip_prefix("impl")?;
    let rest = rest.split(" for ").last()?;
    let name = rest
        .trim_start_matches(|c: char| c == '<' || c == '>' || c == '\'' || c.is_whitespace())
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .find(|word| word.chars().next().is_some_and(char::is_uppercase))?;
    Some(name.to_string())
}

/// The name of the function a line defines, if it does.
fn fn_name(line: &str) -> Option<String> {
    let at = line.find("fn ")?;
    let before = &line[..at];
    let only_modifiers = before
        .split_whitespace()
        .all(|w| w == "pub" || w.starts_with("pub(") || w == "const" || w == "unsafe");
    if !only_modifiers {
        return None;
    }
    let name: String = line[at + 3..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `Type` → its methods, and `module` → its free functions (a module is a file's stem, or its
/// folder's name for `mod.rs`).
fn index() -> (
    HashMap<String, HashSet<String>>,
    HashMap<String, HashSet<String>>,
) {
    let (mut methods, mut modules) = (HashMap::new(), HashMap::new());
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).expect("read");
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let module = match stem {
            "mod" => file
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str()),
            stem => Some(stem),
        }
        .unwrap_or("")
        .to_string();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.starts_with("impl") {
                current = impl_type(line);
            } else if line == "}" {
                current = None;
            } else if let Some(name) = fn_name(line) {
                match (&current, line.starts_with("fn ") || line.starts_with("pub")) {
                    (None, true) => modules.entry(module.clone()).or_insert_with(HashSet::new),
                    (Some(ty), false) => methods.entry(ty.clone()).or_insert_with(HashSet::new),
                    _ => continue,
                }
                .insert(name);
            }
        }
    }
    (methods, modules)
}

/// The README and every page of `docs/`, as (path, text).
fn documentation() -> Vec<(String, String)> {
    let mut paths = vec![PathBuf::from("README.md")];
    let mut pages: Vec<PathBuf> = fs::read_dir("docs")
        .expect("docs/")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).expect("read a page");
            (path.display().to_string(), text)
        })
        .collect()
}

/// The backticked spans of a page.
fn code_spans(readme: &str) -> Vec<String> {
    readme
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_file_the_documentation_names_exists() {
    let missing: Vec<String> = documentation()
        .iter()
        .flat_map(|(page, text)| code_spans(text).into_iter().map(move |span| (page, span)))
        .filter(|(_, span)| {
            ["src/", "tests/", "docs/", "benches/", "fuzz/"]
                .iter()
                .any(|dir| span.starts_with(dir))
                && !span.contains(char::is_whitespace)
                && !span.contains('*')
        })
        .filter(|(_, path)| !GENERATED.contains(&path.as_str()))
        .filter(|(_, path)| !Path::new(path.trim_end_matches('/')).exists())
        .map(|(page, path)| format!("{page}: {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the documentation names files that do not exist: {missing:?}"
    );
}

#[test]
fn every_function_the_documentation_names_exists() {
    let (methods, modules) = index();
    let mut checked = 0;
    let mut missing = Vec::new();
    let pages = documentation();
    let spans = pages
        .iter()
        .flat_map(|(page, text)| code_spans(text).into_iter().map(move |span| (page, span)));
    for (page, span) in spans {
        let Some((owner, item)) = span.split_once("::") else {
            continue;
        };
        let item: String = item
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let is_function = item.chars().next().is_some_and(|c| c.is_lowercase());
        if !is_function || EXTERNAL.contains(&owner) || owner.contains(char::is_whitespace) {
            continue;
        }
        let table = match owner.chars().next() {
            Some(c) if c.is_uppercase() => &methods,
            _ => &modules,
        };
        checked += 1;
        if !table.get(owner).is_some_and(|fns| fns.contains(&item)) {
            missing.push(format!("{page}: {owner}::{item}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the documentation names functions that do not exist: {missing:?}"
    );
    assert!(
        checked >= 20,
        "the documentation names only {checked} functions: is this test reading it?"
    );
}

#[test]
fn the_index_sees_what_it_should_and_not_what_it_should_not() {
    let (methods, modules) = index();
    assert!(methods["Server"].contains("before_sleep"));
    assert!(methods["Presence"].contains("leave"));
    assert!(modules["frame"].contains("parse_header"));
    assert!(!methods["Server"].contains("no_such_function"));
    assert_eq!(
        impl_type("impl<'a> Publish for Relay<'a> {"),
        Some("Relay".into())
    );
    assert_eq!(
        impl_type("impl Default for Config {"),
        Some("Config".into())
    );
}
