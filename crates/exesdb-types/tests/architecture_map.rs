//! The map stays true: every path `docs/ARCHITECTURE.md` names exists, and the map stays short.
//!
//! A path is a backticked token that contains a `/` or ends in `.rs`, `.md`, `.sh`, `.txt`,
//! `.toml` or `.proto`, written relative to the repository root; a `*` stands for any one
//! name. Tokens with spaces or angle brackets, and URL paths such as `/health`, are not paths.
//! The test lives in `exesdb-types` because that crate is the lightest to build.

use std::path::{Path, PathBuf};

/// The map's length bound: a map longer than this has started describing instead of naming.
const MAP_LINES_MAX: usize = 300;

const PATH_ENDINGS: [&str; 6] = [".rs", ".md", ".sh", ".txt", ".toml", ".proto"];

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn map_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ARCHITECTURE.md");
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {path}: {error}"))
}

/// The backticked tokens of `text` that look like repository paths.
fn named_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in text.lines() {
        // Between the backticks of a line, every other piece is inside a code span.
        for token in line.split('`').skip(1).step_by(2) {
            let looks_like_path =
                token.contains('/') || PATH_ENDINGS.iter().any(|ending| token.ends_with(ending));
            let excluded = token.starts_with('/')
                || token.contains(char::is_whitespace)
                || token.contains(['<', '>']);
            if looks_like_path && !excluded && !paths.iter().any(|known| known == token) {
                paths.push(token.to_string());
            }
        }
    }
    paths
}

/// Whether `pattern` (relative to `root`, `*` for any one name) names something that exists.
fn exists(root: &Path, pattern: &str) -> bool {
    let mut candidates = vec![root.to_path_buf()];
    for segment in pattern.trim_end_matches('/').split('/') {
        candidates = candidates
            .iter()
            .flat_map(|base| -> Vec<PathBuf> {
                if segment == "*" {
                    std::fs::read_dir(base)
                        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
                        .unwrap_or_default()
                } else {
                    vec![base.join(segment)]
                }
            })
            .filter(|candidate| candidate.exists())
            .collect();
    }
    !candidates.is_empty()
}

fn missing_paths(text: &str, root: &Path) -> Vec<String> {
    named_paths(text)
        .into_iter()
        .filter(|path| !exists(root, path))
        .collect()
}

#[test]
fn every_path_the_map_names_exists() {
    let text = map_text();
    let paths = named_paths(&text);
    assert!(
        paths.len() > 20,
        "the map names only {} paths; is the extraction broken?",
        paths.len()
    );
    let missing = missing_paths(&text, &repository_root());
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md names paths that do not exist (relative to the repository root):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_map_stays_short() {
    let lines = map_text().lines().count();
    assert!(
        lines <= MAP_LINES_MAX,
        "docs/ARCHITECTURE.md has {lines} lines, more than {MAP_LINES_MAX}: name things, and move \
         behaviour next to the code or into a topic document under docs/"
    );
}

#[test]
fn a_wrong_path_is_reported() {
    let text = "See `crates/exesdb/src/no_such_file.rs`, `docs/NOPE.md`, `crates/*/Cargo.toml`, \
                `/health`, `exesdb.v1.EventStore` and `<pool>/Partition`.";
    assert_eq!(
        missing_paths(text, &repository_root()),
        ["crates/exesdb/src/no_such_file.rs", "docs/NOPE.md"]
    );
}
