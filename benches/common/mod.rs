//! What the benchmarks share: realistic ids and timestamps for generated change events, and a
//! description of the file system the figures were measured on; in modules, the HQ double, the
//! processes they run and CPU time (procs), and what the drain benchmarks share: the backlog in a
//! WAL (backlog), the direct path without eds (direct), the knobs, eds's timed drain and `main`
//! (runs).
#![allow(dead_code)]

use std::path::Path;

pub mod backlog;
pub mod direct;
#[path = "../../tests/common/hq.rs"]
pub mod hq;
pub mod procs;
#[path = "../../tests/common/proxy.rs"]
pub mod proxy;
pub mod runs;
pub mod stack;

/// splitmix64: cheap, well-spread pseudo-random values from a seed.
pub fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Shopmonkey ids look like Mongo object ids: 24 hex digits.
pub fn hex24(seed: u64) -> String {
    format!("{:08x}{:016x}", mix(seed ^ 0xA5A5) as u32, mix(seed))
}

/// A plausible ISO timestamp without a date library: days from a fixed base.
pub fn iso(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400 % 28 + 1, s / 3600 % 24, s / 60 % 60, s % 60);
    format!("2026-11-{d:02}T{h:02}:{m:02}:{sec:02}.{:03}Z", ms % 1000)
}

/// Order statuses as Shopmonkey has them.
pub const STATUSES: [&str; 4] = ["Estimate", "RepairOrder", "Invoice", "Paid"];

/// The file system holding `path`: the longest mount point that is a prefix of it.
pub fn describe_fs(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (dev, mnt, fs) = (w.next()?, w.next()?, w.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), format!("{fs} on {dev} (mounted at {mnt})")))
        })
        .max_by_key(|(len, _)| *len);
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown file system".into())
}
