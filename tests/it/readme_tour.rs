//! Keeps the documentation true.
//!
//! - Every file the README and `docs/*.md` name (`src/...`, `tests/...`, `docs/...`) exists, and
//!   every `Type::function` or `module::function` they name is defined in `src/`.
//! - Every link between the pages leads to a file that exists, and to a heading that exists.
//! - The tour (`docs/tour.md`) holds as a chain: its ```` ```chain ```` blocks list steps, one
//!   `src/file.rs: Type::function` (or `src/file.rs: function`) a line, and each step must be
//!   defined in its file and call the next step's function. A renamed function or a re-routed
//!   call breaks the chain, and the failure names the link that broke.
//! - The flag tables of the README and `docs/configuration.md` have a row for every flag of
//!   `mio-chat --help`, naming its environment variable, and no row for a flag it lacks.
//! - The tour's first-read path (its ```` ```reading ```` block) names code that exists, and adds
//!   up to about 700 lines.
//!
//! The sources are read as text, not parsed. They are rustfmt-formatted (CI checks it), which
//! makes the text regular enough: an `impl` block starts at column 0 with `impl` and ends at a
//! `}` in column 0; a method starts at four spaces with `fn` (after `pub` and the like) and its
//! body ends at the first line of exactly four spaces and `}`; a free function does the same at
//! column 0.

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

/// The type an `impl` line is for: `impl<'a> Trait for Type<'a> {` gives `Type`, and
/// `impl<R: Relay> Core<R> {` gives `Core` (the impl's own generics and their bounds are skipped).
fn impl_type(line: &str) -> Option<String> {
    let rest = skip_generics(line.strip_prefix("impl")?);
    let rest = rest.split(" for ").last()?;
    let name = rest
        .trim_start_matches(|c: char| c == '<' || c == '>' || c == '\'' || c.is_whitespace())
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .find(|word| word.chars().next().is_some_and(char::is_uppercase))?;
    Some(name.to_string())
}

/// What follows a leading `<...>` (nested brackets counted; the `>` of `->` is no bracket).
fn skip_generics(text: &str) -> &str {
    if !text.starts_with('<') {
        return text;
    }
    let mut depth = 0;
    let mut previous = ' ';
    for (at, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if previous != '-' => {
                depth -= 1;
                if depth == 0 {
                    return &text[at + 1..];
                }
            }
            _ => {}
        }
        previous = c;
    }
    text
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
    assert_eq!(
        impl_type("impl<R: Relay> RoomCore<R> {"),
        Some("RoomCore".into())
    );
    assert_eq!(
        impl_type("impl<S: Read> Read for Counted<'_, S> {"),
        Some("Counted".into())
    );
}

// ---- The tour as a chain ------------------------------------------------------------------------

const TOUR: &str = "docs/tour.md";

/// The first-read path is "about 700 lines": this much either way still is.
const READING_LINES: std::ops::RangeInclusive<usize> = 600..=800;

/// What one step of the tour names in its file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    /// `Type::function` (a method in an `impl Type` block) or `function` (a free function).
    Fn { owner: Option<String>, name: String },
    /// `struct Name` or `enum Name`: the definition, with its fields.
    Type { kind: String, name: String },
    /// `//!`: the lines on the file's role at its top.
    ModuleDoc,
}

/// One line of a ```` ```chain ```` or ```` ```reading ```` block: `src/file.rs: item`.
#[derive(Debug, Clone)]
struct Step {
    file: String,
    item: Item,
    /// Where the step is written, for the failure message: `docs/tour.md:LINE`.
    line: usize,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let item = match &self.item {
            Item::Fn {
                owner: Some(o),
                name,
            } => format!("{o}::{name}"),
            Item::Fn { owner: None, name } => name.clone(),
            Item::Type { kind, name } => format!("{kind} {name}"),
            Item::ModuleDoc => "//!".to_string(),
        };
        write!(f, "{TOUR}:{}: `{}: {item}`", self.line, self.file)
    }
}

fn parse_step(text: &str, line: usize) -> Result<Step, String> {
    let (file, item) = text
        .split_once(": ")
        .ok_or_else(|| format!("{TOUR}:{line}: `{text}` is not `src/file.rs: item`"))?;
    let item = item.trim();
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_alphanumeric() || c == '_');
    let item = match item.split_once(' ') {
        _ if item == "//!" => Item::ModuleDoc,
        Some((kind @ ("struct" | "enum"), name)) if word(name) => Item::Type {
            kind: kind.to_string(),
            name: name.to_string(),
        },
        None => match item.split_once("::") {
            Some((owner, name)) if word(owner) && word(name) => Item::Fn {
                owner: Some(owner.to_string()),
                name: name.to_string(),
            },
            None if word(item) => Item::Fn {
                owner: None,
                name: item.to_string(),
            },
            _ => return Err(format!("{TOUR}:{line}: cannot read the item `{item}`")),
        },
        _ => return Err(format!("{TOUR}:{line}: cannot read the item `{item}`")),
    };
    Ok(Step {
        file: file.trim().to_string(),
        item,
        line,
    })
}

/// The steps of every fenced block whose info string is `info`, block by block.
fn fenced_steps(text: &str, info: &str) -> Result<Vec<Vec<Step>>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<Step>> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == format!("```{info}") => current = Some(Vec::new()),
            None => {}
            Some(_) if trimmed == "```" => blocks.extend(current.take()),
            Some(_) if trimmed.is_empty() || trimmed.starts_with('#') => {} // blank or a comment
            Some(steps) => steps.push(parse_step(trimmed, i + 1)?),
        }
    }
    Ok(blocks)
}

/// Where an item sits in a source text, as 0-based line numbers: `doc` is the first line of the
/// doc comments and attributes above it, `def` its first line, `end` its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    doc: usize,
    def: usize,
    end: usize,
}

/// Finds `item` in `source` (see the file's opening comment for the rules of the text).
fn locate(source: &str, item: &Item) -> Option<Span> {
    let lines: Vec<&str> = source.lines().collect();
    if *item == Item::ModuleDoc {
        let n = lines.iter().take_while(|l| l.starts_with("//!")).count();
        return (n > 0).then_some(Span {
            doc: 0,
            def: 0,
            end: n - 1,
        });
    }
    let mut current: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("impl") {
            current = impl_type(line);
            continue;
        } else if *line == "}" {
            current = None;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let found = match item {
            Item::Fn { owner, name } => {
                let wanted_indent = if owner.is_some() { 4 } else { 0 };
                indent == wanted_indent
                    && current.as_ref() == owner.as_ref()
                    && fn_name(line).as_deref() == Some(name.as_str())
            }
            Item::Type { kind, name } => {
                indent == 0 && current.is_none() && type_name(line, kind) == Some(name.as_str())
            }
            Item::ModuleDoc => false,
        };
        if found {
            return Some(span_from(&lines, i, indent));
        }
    }
    None
}

/// The name a line defines as a `kind` (`struct` or `enum`), after its visibility.
fn type_name<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    let rest = line
        .split_once(&format!("{kind} "))
        .filter(|(before, _)| before.split_whitespace().all(|w| w.starts_with("pub")))?
        .1;
    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
}

/// An item that starts at line `def` with `indent` spaces: its doc comments above, and its end.
fn span_from(lines: &[&str], def: usize, indent: usize) -> Span {
    let mut doc = def;
    while doc > 0 {
        let above = lines[doc - 1].trim_start();
        if !(above.starts_with("///") || above.starts_with("#[")) {
            break;
        }
        doc -= 1;
    }
    let closing = format!("{}}}", " ".repeat(indent));
    let first = lines[def].trim_end();
    let end = if first.ends_with(';') || (first.contains('{') && first.ends_with('}')) {
        def // `struct Unit;`, `pub struct Tuple(u8);`, or a body on one line
    } else {
        (def + 1..lines.len())
            .find(|&i| lines[i] == closing || lines[i].starts_with(&format!("{closing})")))
            .unwrap_or(lines.len() - 1)
    };
    Span { doc, def, end }
}

/// The code of `text` without its `//` comments and the contents of its string literals, so that
/// a comment or a message naming a function is not taken for a call of it.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let (mut in_string, mut escaped) = (false, false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_string => escaped = true,
                '"' => {
                    in_string = !in_string;
                    out.push(c);
                }
                '/' if !in_string && chars.peek() == Some(&'/') => break,
                _ if in_string => {}
                _ => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// Whether `code` calls `name`: the word followed by `(` (a call), or preceded by `::` (a path,
/// which is how a function is passed by name: `.and_then(Server::stop_on_signals)`).
fn calls(code: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, _)| {
        let before = &code[..at];
        let after = &code[at + name.len()..];
        let whole_word = !before.chars().next_back().is_some_and(is_word)
            && !after.chars().next().is_some_and(is_word);
        whole_word && (after.trim_start().starts_with('(') || before.ends_with("::"))
    })
}

/// The source text of the item a step names, or why it cannot be had.
fn source_of(step: &Step) -> Result<(String, Span), String> {
    let source = fs::read_to_string(&step.file)
        .map_err(|e| format!("{step}: cannot read {}: {e}", step.file))?;
    let span = locate(&source, &step.item)
        .ok_or_else(|| format!("{step}: not defined in {}", step.file))?;
    Ok((source, span))
}

/// Checks one chain: every step defined in its file and calling the next one. Returns every
/// broken link, each said as "which step, and what it does not do".
fn check_chain(chain: &[Step]) -> Vec<String> {
    let mut broken = Vec::new();
    for (i, step) in chain.iter().enumerate() {
        let (source, span) = match source_of(step) {
            Ok(found) => found,
            Err(why) => {
                broken.push(why);
                continue;
            }
        };
        let Some(next) = chain.get(i + 1) else {
            continue;
        };
        let Item::Fn { name, .. } = &next.item else {
            broken.push(format!(
                "{next}: a chain's steps after the first are functions"
            ));
            continue;
        };
        let body: Vec<&str> = source.lines().collect();
        let code = without_comments(&body[span.def..=span.end].join("\n"));
        if !calls(&code, name) {
            broken.push(format!(
                "{step} does not call `{name}`, the next step ({next}): \
                 the chain breaks here; was it renamed, or is it called from elsewhere now?"
            ));
        }
    }
    broken
}

#[test]
fn the_tour_holds_as_a_chain_of_calls() {
    let tour = fs::read_to_string(TOUR).expect("docs/tour.md");
    let chains = fenced_steps(&tour, "chain").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        chains.len() >= 8,
        "{TOUR} has {} chain blocks: is this test reading it?",
        chains.len()
    );
    let mut broken = Vec::new();
    for chain in &chains {
        assert!(chain.len() >= 2, "a chain of one step: {}", chain[0]);
        broken.extend(check_chain(chain));
    }
    assert!(
        broken.is_empty(),
        "the tour's chains are broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_first_read_path_names_code_that_exists_and_is_about_700_lines() {
    let tour = fs::read_to_string(TOUR).expect("docs/tour.md");
    let blocks = fenced_steps(&tour, "reading").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(blocks.len(), 1, "{TOUR} has one ```reading block");
    let mut lines = 0;
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for step in &blocks[0] {
        let key = (step.file.clone(), step.item.clone());
        assert!(seen.insert(key), "named twice: {step}");
        match source_of(step) {
            Ok((_, span)) => lines += span.end - span.doc + 1,
            Err(why) => missing.push(why),
        }
    }
    assert!(
        missing.is_empty(),
        "the first-read path:\n{}",
        missing.join("\n")
    );
    assert!(
        READING_LINES.contains(&lines),
        "the first-read path is {lines} lines; {TOUR} promises about 700 ({READING_LINES:?})"
    );
}

/// A source file for the chain checker to judge: a comment and a string name functions, and
/// neither is a call.
const FIXTURE: &str = "//! A file.\n\nimpl Thing {\n    /// Calls b.\n    pub fn a(&self) {\n        \
     // b() in a comment is no call\n        self.b(1);\n    }\n\n    fn b(&self, _: u8) {\n        \
     let _ = \"c() in a string\";\n    }\n\n    fn c(&self) {}\n}\n\nfn free() {\n    \
     Thing::a;\n}\n\npub(super) struct Fields {\n    x: u8,\n}\n";

#[test]
fn the_chain_checker_catches_what_it_must() {
    let dir = std::env::temp_dir().join(format!("readme-tour-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("a.rs");
    fs::write(&file, FIXTURE).expect("write");
    let path = file.display().to_string();
    let step = |item: &str, line| parse_step(&format!("{path}: {item}"), line).expect("a step");
    let chain = |items: &[&str]| -> Vec<Step> {
        items
            .iter()
            .enumerate()
            .map(|(i, s)| step(s, i + 1))
            .collect()
    };
    assert!(check_chain(&chain(&["Thing::a", "Thing::b"])).is_empty());
    assert!(
        check_chain(&chain(&["free", "Thing::a"])).is_empty(),
        "a path counts"
    );
    let broken = check_chain(&chain(&["Thing::b", "Thing::a"]));
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].contains("does not call `a`"), "{}", broken[0]);
    let broken = check_chain(&chain(&["Thing::a", "Thing::nope"]));
    assert!(
        broken.iter().any(|b| b.contains("not defined")),
        "{broken:?}"
    );
    let broken = check_chain(&chain(&["Thing::b", "Thing::c"]));
    assert!(
        broken.iter().any(|b| b.contains("does not call `c`")),
        "strings: {broken:?}"
    );
    let broken = check_chain(&chain(&["free", "Other::a"]));
    assert!(
        broken.iter().any(|b| b.contains("not defined")),
        "the owner: {broken:?}"
    );
    let source = fs::read_to_string(&file).expect("read");
    let span = |item: &str| {
        let span = locate(&source, &step(item, 1).item).expect(item);
        (span.doc, span.def, span.end)
    };
    assert_eq!(
        span("Thing::a"),
        (3, 4, 7),
        "doc comment, definition, closing brace"
    );
    assert_eq!(span("Thing::c"), (13, 13, 13), "a body on one line");
    assert_eq!(span("struct Fields"), (20, 20, 22));
    assert_eq!(span("//!"), (0, 0, 0));
    assert!(parse_step("src/a.rs Thing::a", 1).is_err());
    assert!(parse_step("src/a.rs: Thing::a()", 1).is_err());
    fs::remove_dir_all(&dir).ok();
}

// ---- Links between pages ------------------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect::<String>()
        .to_lowercase()
}

/// The anchors of a page's headings (not of lines in code blocks that start with `#`).
fn anchors(text: &str) -> HashSet<String> {
    let mut in_code = false;
    let mut out = HashSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_link_between_pages_resolves() {
    let mut pages = documentation();
    pages.push((
        "CHANGELOG.md".into(),
        fs::read_to_string("CHANGELOG.md").expect("CHANGELOG.md"),
    ));
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, text) in &pages {
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(target) = rest.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            checked += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let base = Path::new(page).parent().unwrap_or(Path::new(""));
            let file = if path.is_empty() {
                PathBuf::from(page)
            } else {
                base.join(path)
            };
            if !file.exists() {
                broken.push(format!("{page}: {target}: no such file"));
            } else if !fragment.is_empty() && file.extension().is_some_and(|e| e == "md") {
                let text = fs::read_to_string(&file).expect("read a linked page");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{page}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked >= 30,
        "only {checked} links: is this test reading the pages?"
    );
    assert_eq!(
        anchor(" Fair share: one client cannot drown the room"),
        "fair-share-one-client-cannot-drown-the-room"
    );
    assert_eq!(
        anchor(" Several processes: Redis and SO_REUSEPORT"),
        "several-processes-redis-and-so_reuseport"
    );
}

// ---- The flag tables --------------------------------------------------------------------------

/// The long flags `mio-chat --help` lists (without `--help` and `--version`).
fn flags_of_the_binary() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mio-chat"))
        .arg("--help")
        .output()
        .expect("run mio-chat --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let mut flags: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .map(str::to_string)
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

/// The row of a flag table in `page` that documents `flag`: its first cell lists flags, `flag`
/// among them.
fn row_of<'a>(page: &'a str, flag: &str) -> Option<&'a str> {
    page.lines().find(|line| {
        let first_cell = line.split('|').nth(1).unwrap_or("").trim_start();
        line.starts_with('|')
            && first_cell.starts_with("`--")
            && (first_cell.contains(&format!("`{flag}`"))
                || first_cell.contains(&format!("`{flag} ")))
    })
}

#[test]
fn the_flag_tables_name_every_flag_with_its_variable() {
    let flags = flags_of_the_binary();
    assert!(flags.len() >= 20, "only {flags:?}: is --help read?");
    let mut missing = Vec::new();
    for (path, prefix) in [("README.md", ""), ("docs/configuration.md", "MIO_CHAT_")] {
        let page = fs::read_to_string(path).expect(path);
        for flag in &flags {
            let variable = format!("`{prefix}{}`", flag[2..].to_uppercase().replace('-', "_"));
            match row_of(&page, flag) {
                None => missing.push(format!("{path}: no row for {flag}")),
                Some(row) if !row.contains(&variable) => missing.push(format!(
                    "{path}: the row of {flag} does not name {variable}"
                )),
                Some(_) => {}
            }
        }
        // And no row for a flag the binary does not have.
        for line in page.lines().filter(|l| l.starts_with("| `--")) {
            let named = line[3..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'));
            if let Some(flag) = named.into_iter().find(|w| w.starts_with("--")) {
                if !flags.iter().any(|f| f == flag) {
                    missing.push(format!(
                        "{path}: a row for {flag}, which mio-chat does not have"
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the flag tables:\n{}",
        missing.join("\n")
    );
}
