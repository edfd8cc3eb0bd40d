//! eds's integration tests, as one test binary: each file beside this one is a module here.
//!
//! One binary instead of one per file: `tests/common` is compiled once, and one ~150 MB test
//! binary is linked instead of twenty-five, which is most of a fresh machine's test build. Run a
//! file's tests with its module name as the filter, e.g. `cargo nextest run --test integration
//! faults::` (or `-E 'test(/^faults::/)'`). A new test file must be added below (Cargo.toml sets
//! `autotests = false`); `every_test_file_is_a_module` fails until it is.

mod common;

mod cli;
mod delivery;
mod docs;
mod e2e;
#[cfg(feature = "eventhub")]
mod e2e_eventhub;
#[cfg(feature = "kafka")]
mod e2e_kafka;
mod e2e_mysql;
#[cfg(feature = "s3")]
mod e2e_s3;
#[cfg(feature = "snowflake")]
mod e2e_snowflake;
mod enroll;
mod faults;
mod hq;
mod import;
mod import_load;
mod import_resume;
mod import_seam;
mod ingest;
mod integrationtest;
mod nats_jwt;
mod packaging;
mod server;
mod server_crash;
mod supervisor;
mod upgrade;
mod validator;

/// Cargo builds only the test targets Cargo.toml names, so a test file not declared above would
/// silently never run: every `tests/*.rs` must be a module of this file.
#[test]
fn every_test_file_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("read tests/main.rs");
    let declared: std::collections::BTreeSet<&str> =
        main.lines().filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';')).collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/") {
        let path = entry.expect("a tests/ entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().is_some_and(|e| e == "rs") && stem != "main" && !declared.contains(stem) {
            missing.push(format!("tests/{stem}.rs"));
        }
    }
    assert!(missing.is_empty(), "not declared as `mod <name>;` in tests/main.rs, so never built or run: {missing:?}");
}
