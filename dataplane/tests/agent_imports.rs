//! Agents import one way (docs/ARCHITECTURE.md): no agent module (conductor, receiver, sender,
//! archiver) names another agent module. They exchange commands through `proxy`, what they give
//! up through `retire`, storage reads through `replay`, and share plain types (`archive`,
//! `catchup`, `session`, `counters`, ...). This test reads the sources and fails on any path
//! `crate::<agent>` (or `super::<agent>`) in another agent's files, `use crate::{...}` groups
//! included.

use std::path::{Path, PathBuf};

const AGENTS: [&str; 4] = ["conductor", "receiver", "sender", "archiver"];

/// The source files of agent module `agent`: `src/<agent>.rs` and everything under `src/<agent>/`.
fn sources(agent: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for file in [
        src.join(format!("{agent}.rs")),
        src.join(agent).join("mod.rs"),
    ] {
        if file.is_file() {
            files.push(file);
        }
    }
    let mut dirs = vec![src.join(agent)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable source directory").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !files.contains(&path) {
                files.push(path);
            }
        }
    }
    files
}

/// The text without `//` comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments named after `crate::` or `super::` in `code`, `{...}` groups included.
fn crate_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["crate::", "super::super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(group.len(), |(i, _)| i);
                names.extend(top_level_items(&group[..end]));
            } else {
                names.push(ident(rest).to_string());
            }
        }
    }
    names
}

/// The leading identifiers of the comma-separated items of a `{...}` group (top level only).
fn top_level_items(group: &str) -> Vec<String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(ident(group[start..i].trim()).to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(ident(group[start..].trim()).to_string());
    items
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// (file, other agent) for every agent module that names another one.
fn violations() -> Vec<(PathBuf, &'static str)> {
    let mut found = Vec::new();
    for agent in AGENTS {
        let files = sources(agent);
        assert!(!files.is_empty(), "no sources for agent module `{agent}`");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source file");
            let named = crate_modules(&code(&text));
            for other in AGENTS.iter().filter(|&&o| o != agent) {
                if named.iter().any(|n| n == other) {
                    found.push((file.clone(), *other));
                }
            }
        }
    }
    found
}

#[test]
fn no_agent_module_imports_another() {
    let found = violations();
    assert!(
        found.is_empty(),
        "agent modules import other agent modules (put what they exchange in proxy.rs or a shared module): {found:#?}"
    );
}

#[test]
fn the_scanner_sees_every_form_of_import() {
    let text = "use crate::sender::Phase;\nuse crate::{agent::Agent, conductor::{A, B}};\nlet x = crate::archiver::BATCH;\n// crate::receiver::X in a comment\nuse super::super::receiver;";
    let named = crate_modules(&code(text));
    for m in ["sender", "agent", "conductor", "archiver", "receiver"] {
        assert!(named.iter().any(|n| n == m), "{m} in {named:?}");
    }
    assert_eq!(named.iter().filter(|n| *n == "receiver").count(), 1);
}
