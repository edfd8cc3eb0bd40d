//! What ships beside the binary: the systemd unit verifies clean with `systemd-analyze verify`,
//! keeps the hardening and restart policy the README promises, and its command line is one the
//! binary accepts. (The container image is built by `scripts/test.sh` when a container engine
//! is reachable; it says so when none is.)
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../contrib/eds.service");
const DOCKERFILE: &str = include_str!("../Dockerfile");

/// `key=value` lines of the unit (the last one wins, as in systemd).
fn setting(key: &str) -> String {
    UNIT.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .next_back()
        .unwrap_or_else(|| panic!("contrib/eds.service has no {key}="))
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is missing (apt-get install systemd; scripts/test.sh installs it)");
    // systemd checks that ExecStart's program exists: the unit, pointed at the binary built here.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("eds.service");
    std::fs::write(&unit, UNIT.replace("/opt/eds/bin/eds ", &format!("{} ", env!("CARGO_BIN_EXE_eds")))).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&unit).env("SYSTEMD_LOG_COLOR", "0").output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    // A setting systemd cannot parse is only a warning ("ignoring"): none is allowed.
    let unit_lines: Vec<&str> = said.lines().filter(|l| l.contains("eds.service")).collect();
    assert!(unit_lines.is_empty(), "systemd-analyze verify warned about the unit:\n{said}");
}

#[test]
fn the_unit_restarts_on_failure_only_and_is_hardened() {
    assert_eq!(setting("Restart"), "on-failure");
    // Exit 2 is a usage error (eds::exit::USAGE): restarting cannot fix it.
    assert_eq!(setting("RestartPreventExitStatus"), eds::exit::USAGE.to_string());
    assert_eq!(setting("User"), "eds");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "eds"),
    ] {
        assert_eq!(setting(key), value, "{key}");
    }
    let writable: Vec<String> = setting("ReadWritePaths").split_whitespace().map(str::to_owned).collect();
    assert!(writable.contains(&"/var/lib/eds".to_owned()), "the data dir is writable: {writable:?}");
    let exec = setting("ExecStart");
    assert!(exec.contains("--data-dir /var/lib/eds"), "{exec}");
    // The binary's directory is writable so HQ's upgrades can replace it.
    let binary = exec.split_whitespace().next().unwrap();
    let bin_dir = Path::new(binary).parent().unwrap().to_str().unwrap();
    assert!(writable.iter().any(|w| w == bin_dir), "{bin_dir} in ReadWritePaths: {writable:?}");
}

#[test]
fn the_units_and_the_images_command_lines_are_ones_eds_accepts() {
    // `--help` after the flags: clap checks every flag before printing help and exiting 0.
    let exec = setting("ExecStart").replace("$EDS_ARGS", "");
    let args: Vec<&str> = exec.split_whitespace().skip(1).chain(["--help"]).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_eds")).args(&args).output().unwrap();
    assert!(out.status.success(), "eds {args:?}: {}", String::from_utf8_lossy(&out.stderr));

    // The image: CMD's JSON array after ENTRYPOINT ["eds"].
    let cmd = DOCKERFILE.lines().find_map(|l| l.strip_prefix("CMD ")).expect("the Dockerfile has a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    args.push("--help");
    let out = Command::new(env!("CARGO_BIN_EXE_eds")).args(&args).output().unwrap();
    assert!(out.status.success(), "eds {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    for needed in ["USER eds", "VOLUME [\"/data\"]", "ENV EDS_BIND=0.0.0.0", "HEALTHCHECK"] {
        assert!(DOCKERFILE.contains(needed), "the Dockerfile lacks {needed:?}");
    }
}
