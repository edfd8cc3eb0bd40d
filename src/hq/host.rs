//! Facts about this machine that HQ asks for: in the session request (spec §3.2) and in every
//! heartbeat (memory and load, §2.4). Read from `/proc`, `/etc` and `uname`; a fact that cannot
//! be read is left empty, never invented.

use serde_json::{json, Value};
use std::net::{Ipv4Addr, UdpSocket};

/// The host part of `osinfo`.
#[derive(Debug, Default, Clone)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Seconds since boot.
    pub uptime: u64,
    /// Unix seconds of the boot.
    pub boot_time: u64,
    /// Processes running.
    pub procs: u64,
    /// `linux`, `macos`, …
    pub os: String,
    /// Distribution id (`debian`, `ubuntu`, …).
    pub platform: String,
    /// Distribution family (`ID_LIKE`, else the id).
    pub platform_family: String,
    /// Distribution version.
    pub platform_version: String,
    /// Kernel release.
    pub kernel_version: String,
    /// Machine architecture as the kernel names it.
    pub kernel_arch: String,
    /// The OS machine id.
    pub host_id: String,
}

impl HostFacts {
    /// As HQ's `osinfo.host` object.
    pub fn to_json(&self) -> Value {
        json!({
            "hostname": self.hostname,
            "uptime": self.uptime,
            "bootTime": self.boot_time,
            "procs": self.procs,
            "os": self.os,
            "platform": self.platform,
            "platformFamily": self.platform_family,
            "platformVersion": self.platform_version,
            "kernelVersion": self.kernel_version,
            "kernelArch": self.kernel_arch,
            "virtualizationSystem": "",
            "virtualizationRole": "",
            "hostId": self.host_id,
        })
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A key of an `os-release` file, unquoted.
fn os_release_value(text: &str, key: &str) -> String {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .unwrap_or_default()
}

/// This machine's facts.
pub fn facts() -> HostFacts {
    let uname = rustix::system::uname();
    let uptime =
        read("/proc/uptime").split_whitespace().next().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) as u64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let release = {
        let t = read("/etc/os-release");
        if t.is_empty() {
            read("/usr/lib/os-release")
        } else {
            t
        }
    };
    let platform = os_release_value(&release, "ID");
    let family = os_release_value(&release, "ID_LIKE");
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .count()
        })
        .unwrap_or(0) as u64;
    HostFacts {
        hostname: uname.nodename().to_string_lossy().into_owned(),
        uptime,
        boot_time: if uptime > 0 { now.saturating_sub(uptime) } else { 0 },
        procs,
        os: std::env::consts::OS.to_owned(),
        platform_family: if family.is_empty() { platform.clone() } else { family },
        platform,
        platform_version: os_release_value(&release, "VERSION_ID"),
        kernel_version: uname.release().to_string_lossy().into_owned(),
        kernel_arch: uname.machine().to_string_lossy().into_owned(),
        host_id: machine_id(),
    }
}

/// The OS machine id (`/etc/machine-id`, else `/var/lib/dbus/machine-id`), trimmed.
pub fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .map(|p| read(p).trim().to_owned())
        .find(|id| !id.is_empty())
        .unwrap_or_default()
}

/// `machineId` as HQ expects it: lowercase hex of HMAC-SHA256 keyed with the OS machine id over
/// the message `eds`, so the raw id never leaves the machine in that field.
pub fn machine_id_hash() -> String {
    hmac_hex(machine_id().as_bytes(), b"eds")
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The private (RFC 1918) IPv4 address this machine reaches the network from, found by asking
/// the routing table for a private destination (a UDP "connect" sends nothing).
pub fn private_ipv4() -> Option<Ipv4Addr> {
    for probe in ["10.255.255.255:9", "192.168.255.255:9", "172.31.255.255:9"] {
        let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else { continue };
        if socket.connect(probe).is_err() {
            continue;
        }
        if let Ok(std::net::SocketAddr::V4(local)) = socket.local_addr() {
            let ip = *local.ip();
            if ip.is_private() {
                return Some(ip);
            }
        }
    }
    None
}

/// `memory` of a heartbeat: `/proc/meminfo` in bytes, with gopsutil's field names.
pub fn memory() -> Value {
    let text = read("/proc/meminfo");
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = kib("MemTotal");
    let available = kib("MemAvailable");
    let used = total.saturating_sub(available);
    let used_percent = if total > 0 { used as f64 * 100.0 / total as f64 } else { 0.0 };
    json!({
        "total": total,
        "available": available,
        "used": used,
        "usedPercent": used_percent,
        "free": kib("MemFree"),
        "active": kib("Active"),
        "inactive": kib("Inactive"),
        "buffers": kib("Buffers"),
        "cached": kib("Cached"),
        "swapTotal": kib("SwapTotal"),
        "swapFree": kib("SwapFree"),
    })
}

/// `load` of a heartbeat: the 1, 5 and 15 minute load averages.
pub fn load() -> Value {
    let text = read("/proc/loadavg");
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().unwrap_or(0.0));
    json!({ "load1": it.next().unwrap_or(0.0), "load5": it.next().unwrap_or(0.0), "load15": it.next().unwrap_or(0.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_hmac_sha256_keyed_by_the_id() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let h = machine_id_hash();
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let t = "NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\nID_LIKE='rhel fedora'\n";
        assert_eq!(os_release_value(t, "ID"), "debian");
        assert_eq!(os_release_value(t, "VERSION_ID"), "12");
        assert_eq!(os_release_value(t, "ID_LIKE"), "rhel fedora");
        assert_eq!(os_release_value(t, "MISSING"), "");
    }

    #[test]
    fn facts_and_figures_are_read() {
        let f = facts();
        assert!(!f.hostname.is_empty() && !f.kernel_version.is_empty() && f.procs > 0, "{f:?}");
        assert!(memory()["total"].as_u64().unwrap() > 0);
        assert!(load()["load1"].as_f64().is_some());
    }
}
