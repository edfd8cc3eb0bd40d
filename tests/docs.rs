//! The operations docs name real things: every `eds_…` metric the READMEs mention is one that
//! `src/metrics.rs` defines, every benchmark has its row in `benches/README.md` and every
//! `cargo bench --bench NAME` they show names a benchmark, and the exit-code table says what the
//! code returns.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

const README: &str = include_str!("../README.md");
const BENCHES_README: &str = include_str!("../benches/README.md");
const METRICS_RS: &str = include_str!("../src/metrics.rs");
const CARGO_TOML: &str = include_str!("../Cargo.toml");

/// The metric names `src/metrics.rs` defines (`pub const X: &str = "eds_…";`).
fn defined_metrics() -> BTreeSet<String> {
    METRICS_RS
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_owned)
        .collect()
}

/// Every `eds_…` word of `text` that reads as a metric name: not a Rust path (`eds_wal::`), not a
/// file name pattern (`eds_<OS>_…`), not part of a path (`../eds_test_data`).
fn mentioned_metrics(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    for (at, _) in text.match_indices("eds_") {
        if at > 0 && (word(bytes[at - 1]) || bytes[at - 1].is_ascii_uppercase() || bytes[at - 1] == b'/') {
            continue;
        }
        let end = at + text[at..].bytes().take_while(|&b| word(b)).count();
        if matches!(bytes.get(end), Some(b':' | b'<')) {
            continue;
        }
        found.insert(text[at..end].to_owned());
    }
    found
}

#[test]
fn every_metric_the_docs_name_exists() {
    let defined = defined_metrics();
    assert!(defined.len() >= 20, "src/metrics.rs should define the metric names: {defined:?}");
    for (doc, text) in [("README.md", README), ("benches/README.md", BENCHES_README)] {
        for name in mentioned_metrics(text) {
            // A histogram's series: `<name>_bucket`, `_sum`, `_count` (but `eds_flush_count` is a
            // histogram of its own).
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| !defined.contains(&name) && defined.contains(*b)))
                .unwrap_or(&name);
            assert!(defined.contains(base), "{doc} names the metric {name}, which src/metrics.rs does not define");
        }
    }
}

#[test]
fn the_word_finder_skips_paths_and_patterns() {
    let found = mentioned_metrics(
        "`eds_wal_bytes` and eds_total_events; `eds_wal::error_chain`, `eds_<OS>_<arch>.tar.gz`, ../eds_test_data/x",
    );
    assert_eq!(found, BTreeSet::from(["eds_total_events".to_owned(), "eds_wal_bytes".to_owned()]));
}

/// The benchmarks Cargo.toml declares (`[[bench]]` … `name = "…"`).
fn benchmarks() -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bench = false;
    for line in CARGO_TOML.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
        } else if let Some(name) = line.strip_prefix("name = \"").filter(|_| in_bench) {
            out.push(name.trim_end_matches('"').to_owned());
        }
    }
    out
}

#[test]
fn every_benchmark_has_its_row_and_every_command_names_a_benchmark() {
    let benches = benchmarks();
    assert!(benches.len() >= 10, "Cargo.toml should declare the benchmarks: {benches:?}");
    for b in &benches {
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").join(format!("{b}.rs")).is_file(),
            "benches/{b}.rs"
        );
        assert!(BENCHES_README.contains(&format!("`{b}.rs`")), "benches/README.md has no row for benches/{b}.rs");
    }
    for (doc, text) in [("README.md", README), ("benches/README.md", BENCHES_README)] {
        for (at, _) in text.match_indices("--bench ") {
            let name: String = text[at + 8..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(benches.contains(&name), "{doc} shows `--bench {name}`, which is no benchmark");
        }
    }
}

#[test]
fn the_exit_code_table_matches_the_code() {
    let table = README
        .split("\n### Exit codes\n")
        .find(|part| part.trim_start().starts_with("| code |"))
        .expect("README.md has an exit-code table under a `### Exit codes` heading");
    let codes: BTreeSet<u8> = table
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_start_matches('|').split('|').next())
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let expected = BTreeSet::from([
        0,
        eds::exit::FAILURE,
        eds::exit::USAGE,
        eds::import::command::DRIVER_FAILED,
        eds::exit::RESTART,
        130,
    ]);
    assert_eq!(codes, expected, "the README's exit codes");
}
