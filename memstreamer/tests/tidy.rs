//! Workspace tidy checks (source scans, no build of other crates):
//!
//! * No non-test function is longer than [`FN_LINES_MAX`] lines. A function's length counts
//!   the lines from its `fn` keyword to its closing brace. Test code is skipped: modules and
//!   items under `#[cfg(test)]` (inline, or a `mod x;` file), `#[test]` functions, and every
//!   file no crate root reaches through `mod` declarations (`tests/`, `fuzz/`, examples).
//! * Every crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, `benches/*.rs`) whose
//!   module tree has no `unsafe` says `#![forbid(unsafe_code)]`.
//!
//! The scan blanks comments, string and char literals, then matches braces: good enough for
//! this workspace's code (no `#[path]` modules, no braces inside generics), not a Rust parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest non-test function, in lines (the style guide aims at ~70).
const FN_LINES_MAX: usize = 120;

/// Functions allowed over [`FN_LINES_MAX`], with the length they may not exceed:
/// `(path from the workspace root, function name, lines)`. Empty, and it stays empty: the
/// last entries (`dataplane` `node::build` 289, `sender` `catch_up_one` 160, `archiver`
/// `work_partition` 123, `shm-ring` `poll_inner` 182, `benches` `shm::run_rounds` 148) were
/// split into named steps. The mechanism stays for a split that must land in two steps: an
/// entry may only shrink, and one back within the limit must be removed (the test says so).
const OVER_LIMIT_ALLOWED: &[(&str, &str, usize)] = &[];

/// The workspace root (this crate's parent directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("memstreamer/ has a parent")
        .to_path_buf()
}

/// `src` with comments and the contents of string and char literals replaced by spaces
/// (newlines kept, so byte offsets and line numbers stay those of `src`).
fn blank_literals(src: &str) -> Vec<u8> {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        let end = match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => block_comment_end(b, i),
            b'"' => string_end(b, i),
            b'r' if raw_string_start(b, i) => raw_string_end(b, i),
            b'\'' => char_literal_end(b, i).unwrap_or(i + 1),
            _ => {
                i += 1;
                continue;
            }
        };
        let end = end.min(b.len());
        for c in &mut out[i..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        i = end;
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

/// End (exclusive) of a `/* */` comment starting at `i`; they nest.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// End (exclusive) of a `"..."` literal whose opening quote is at `i`.
fn string_end(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// `r"`, `r#"`, `br"`... at `i` (the `r`), not the end of an identifier such as `for`.
fn raw_string_start(b: &[u8], i: usize) -> bool {
    let before_ok = match i.checked_sub(1).map(|p| b[p]) {
        None => true,
        Some(b'b') => i < 2 || !is_ident(b[i - 2]),
        Some(c) => !is_ident(c),
    };
    let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
    before_ok && b.get(i + 1 + hashes) == Some(&b'"')
}

fn raw_string_end(b: &[u8], i: usize) -> usize {
    let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = i + 2 + hashes;
    b[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(b.len(), |p| body + p + close.len())
}

/// End (exclusive) of a char literal at `i`, or None for a lifetime or label (`'a`).
fn char_literal_end(b: &[u8], i: usize) -> Option<usize> {
    let next = *b.get(i + 1)?;
    if next == b'\\' {
        let close = b[i + 2..].iter().position(|&c| c == b'\'')?;
        return Some(i + 2 + close + 1);
    }
    let width = match next {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    (b.get(i + 1 + width) == Some(&b'\'')).then_some(i + 2 + width)
}

/// One scanned source file.
struct Scan {
    /// `(name, line, lines)` of every non-test function with a body.
    fns: Vec<(String, usize, usize)>,
    /// Names of `mod x;` declarations that are not under `#[cfg(test)]`.
    child_mods: Vec<String>,
    /// Whether the `unsafe` keyword appears outside test code.
    has_unsafe: bool,
    /// Whether the file says `#![forbid(unsafe_code)]`.
    forbids_unsafe: bool,
}

/// Cleaned source plus its line starts.
struct Text {
    b: Vec<u8>,
    line_starts: Vec<usize>,
}

impl Text {
    fn new(src: &str) -> Text {
        let b = blank_literals(src);
        let mut line_starts = vec![0];
        line_starts.extend(
            b.iter()
                .enumerate()
                .filter(|(_, &c)| c == b'\n')
                .map(|(i, _)| i + 1),
        );
        Text { b, line_starts }
    }

    /// 1-based line of byte `pos`.
    fn line(&self, pos: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= pos)
    }

    fn word_at(&self, i: usize) -> &str {
        let len = self.b[i..].iter().take_while(|&&c| is_ident(c)).count();
        std::str::from_utf8(&self.b[i..i + len]).unwrap_or("")
    }

    fn skip_space(&self, mut i: usize) -> usize {
        while i < self.b.len() && self.b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    }

    /// Index just past the bracket closing the one opening at `open`.
    fn matching(&self, open: usize) -> usize {
        let (o, c) = (self.b[open], closer(self.b[open]));
        let mut depth = 0usize;
        for (k, &x) in self.b[open..].iter().enumerate() {
            if x == o {
                depth += 1;
            } else if x == c {
                depth -= 1;
                if depth == 0 {
                    return open + k + 1;
                }
            }
        }
        self.b.len()
    }

    /// From `i`, the first `{` or `;` outside parentheses and brackets.
    fn item_body_or_semi(&self, mut i: usize) -> Option<usize> {
        while i < self.b.len() {
            match self.b[i] {
                b'{' | b';' => return Some(i),
                b'(' | b'[' => i = self.matching(i),
                _ => i += 1,
            }
        }
        None
    }

    /// End (exclusive) of the item starting at `i`: its `{ ... }` block or its `;`.
    fn item_end(&self, i: usize) -> usize {
        match self.item_body_or_semi(i) {
            Some(p) if self.b[p] == b'{' => self.matching(p),
            Some(p) => p + 1,
            None => self.b.len(),
        }
    }
}

fn closer(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

/// Whether the inside of `#[...]` marks test-only code.
fn is_test_attr(inner: &str) -> bool {
    let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let words = |s: &str| {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|w| w == "test")
    };
    inner == "test"
        || inner.ends_with("::test")
        || (inner.starts_with("cfg(") && words(&inner) && !inner.contains("not(test"))
}

fn scan(src: &str) -> Scan {
    let t = Text::new(src);
    let compact: String = String::from_utf8_lossy(&t.b)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut s = Scan {
        fns: Vec::new(),
        child_mods: Vec::new(),
        has_unsafe: false,
        forbids_unsafe: compact.contains("#![forbid(unsafe_code)]"),
    };
    let mut i = 0;
    let mut test_item = false;
    while i < t.b.len() {
        let c = t.b[i];
        if c == b'#' && t.b.get(i + 1) == Some(&b'[') {
            let end = t.matching(i + 1);
            test_item |= is_test_attr(&String::from_utf8_lossy(&t.b[i + 2..end - 1]));
            i = end;
        } else if is_ident(c) && (i == 0 || !is_ident(t.b[i - 1])) {
            if test_item {
                // The whole item (a module, function, impl or `mod x;`) is test code.
                test_item = false;
                i = t.item_end(i);
                continue;
            }
            let word = t.word_at(i);
            let next = t.skip_space(i + word.len());
            match word {
                "fn" => record_fn(&t, i, next, &mut s),
                "mod" => record_mod(&t, next, &mut s),
                "unsafe" => s.has_unsafe = true,
                _ => {}
            }
            i += word.len();
        } else {
            i += 1;
        }
    }
    s
}

/// A `fn name ... { }` at `at` (name starting at `name`); nested functions are found by the
/// caller's scan, which continues inside the body.
fn record_fn(t: &Text, at: usize, name: usize, s: &mut Scan) {
    let fn_name = t.word_at(name);
    if fn_name.is_empty() {
        return; // `fn(u8) -> u8`, a function pointer type
    }
    if let Some(open) = t.item_body_or_semi(name) {
        if t.b[open] == b'{' {
            let close = t.matching(open) - 1;
            let (first, last) = (t.line(at), t.line(close));
            s.fns.push((fn_name.to_string(), first, last - first + 1));
        }
    }
}

fn record_mod(t: &Text, name: usize, s: &mut Scan) {
    let mod_name = t.word_at(name);
    if !mod_name.is_empty() && t.b.get(t.skip_space(name + mod_name.len())) == Some(&b';') {
        s.child_mods.push(mod_name.to_string());
    }
}

/// A crate root and the files of its module tree (test modules left out).
struct CrateTree {
    root: PathBuf,
    files: BTreeMap<PathBuf, Scan>,
}

fn crate_tree(root: &Path) -> CrateTree {
    let mut files = BTreeMap::new();
    let mut todo = vec![(root.to_path_buf(), true)];
    while let Some((file, is_root)) = todo.pop() {
        if files.contains_key(&file) {
            continue;
        }
        let src = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let scanned = scan(&src);
        let dir = file.parent().expect("a file has a directory");
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let child_dir = if is_root || stem == "mod" {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        };
        for m in &scanned.child_mods {
            let flat = child_dir.join(format!("{m}.rs"));
            let nested = child_dir.join(m).join("mod.rs");
            if flat.exists() {
                todo.push((flat, false));
            } else if nested.exists() {
                todo.push((nested, false));
            }
        }
        files.insert(file, scanned);
    }
    CrateTree {
        root: root.to_path_buf(),
        files,
    }
}

/// Every crate root of every workspace crate (top-level directories with a Cargo.toml).
fn crate_roots(ws: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(ws)
        .expect("reading the workspace root")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    crates.sort();
    for c in crates {
        let src = c.join("src");
        roots.extend(
            [src.join("lib.rs"), src.join("main.rs")]
                .into_iter()
                .filter(|p| p.is_file()),
        );
        for dir in [src.join("bin"), c.join("benches")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.map(|e| e.expect("a directory entry").path()) {
                if e.extension().is_some_and(|x| x == "rs") {
                    roots.push(e);
                } else if e.join("main.rs").is_file() {
                    roots.push(e.join("main.rs"));
                }
            }
        }
    }
    roots
}

fn relative(ws: &Path, p: &Path) -> String {
    p.strip_prefix(ws).unwrap_or(p).display().to_string()
}

/// `(path, name, line, lines)` of every non-test function over the limit.
fn long_functions(ws: &Path) -> Vec<(String, String, usize, usize)> {
    let mut seen = BTreeMap::new();
    for root in crate_roots(ws) {
        for (file, scan) in crate_tree(&root).files {
            for (name, line, lines) in scan.fns {
                if lines > FN_LINES_MAX {
                    seen.insert((relative(ws, &file), line), (name, lines));
                }
            }
        }
    }
    seen.into_iter()
        .map(|((path, line), (name, lines))| (path, name, line, lines))
        .collect()
}

#[test]
fn no_non_test_function_is_longer_than_the_limit() {
    let ws = workspace_root();
    let found = long_functions(&ws);
    let mut errors = Vec::new();
    for (path, name, line, lines) in &found {
        match OVER_LIMIT_ALLOWED
            .iter()
            .find(|(p, n, _)| p == path && n == name)
        {
            Some(&(_, _, allowed)) if *lines <= allowed => {}
            Some(&(_, _, allowed)) => errors.push(format!(
                "{path}:{line} fn {name}: {lines} lines, longer than its listed {allowed}: split it at its seams"
            )),
            None => errors.push(format!(
                "{path}:{line} fn {name}: {lines} lines (limit {FN_LINES_MAX}): split it into named steps"
            )),
        }
    }
    for (path, name, _) in OVER_LIMIT_ALLOWED {
        if !found.iter().any(|(p, n, ..)| p == path && n == name) {
            errors.push(format!(
                "{path} fn {name} is within {FN_LINES_MAX} lines now (or gone): remove it from OVER_LIMIT_ALLOWED in {}",
                file!()
            ));
        }
    }
    for (path, name, line, lines) in &found {
        eprintln!("over the limit: {path}:{line} fn {name}: {lines} lines");
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn crate_roots_without_unsafe_forbid_it() {
    let ws = workspace_root();
    let roots = crate_roots(&ws);
    assert!(roots.len() >= 8, "found only {roots:?}");
    let mut missing = Vec::new();
    for root in roots {
        let tree = crate_tree(&root);
        let has_unsafe = tree.files.values().any(|s| s.has_unsafe);
        if !has_unsafe && !tree.files[&tree.root].forbids_unsafe {
            missing.push(relative(&ws, &root));
        }
    }
    assert!(
        missing.is_empty(),
        "these crate roots have no unsafe code: add #![forbid(unsafe_code)] to {missing:?}"
    );
}

#[test]
fn the_scanner_sees_through_literals_comments_and_test_code() {
    let src = r##"
fn outer() {
    let s = "}"; let c = '}'; let l: &'static str = r#"{"#; // }
    /* { /* } */ */
    fn inner() {
    }
}
#[cfg(test)]
mod tests {
    fn helper() { unsafe {} }
}
#[test]
fn a_test() {}
#[cfg(test)]
mod more_tests;
mod real;
struct S { f: fn(u8) -> u8 }
trait T { fn decl(&self) -> [u8; 4]; }
"##;
    let s = scan(src);
    let fns: Vec<_> = s
        .fns
        .iter()
        .map(|(n, l, len)| (n.as_str(), *l, *len))
        .collect();
    assert_eq!(fns, [("outer", 2, 6), ("inner", 5, 2)]);
    assert_eq!(s.child_mods, ["real"]);
    assert!(!s.has_unsafe);
}

#[test]
fn this_workspace_is_scanned() {
    // The scan reaches the big crates' module trees (so an empty result means something).
    let ws = workspace_root();
    let files: usize = crate_roots(&ws)
        .iter()
        .map(|r| crate_tree(r).files.len())
        .sum();
    assert!(files > 50, "only {files} files reached");
}
