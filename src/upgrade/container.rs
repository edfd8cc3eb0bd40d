//! Whether this process runs inside a container, where replacing the executable is pointless (the
//! image is replaced instead) and upgrades are refused.
//!
//! EDS treats any `/proc/1/cgroup` containing `docker`, `lxc` or even `rt` as a container
//! \[QUIRK\]: `rt` is in `cpuset`, `hugetlb`, `rdma` … so nearly every Linux host looked like one.
//! Here only a container engine's own marks count, and cgroup paths are read component by
//! component.

use std::ffi::OsString;
use std::path::PathBuf;

/// The names container engines give to the cgroups of their containers (`/docker/<id>`,
/// `/kubepods/...`, `/system.slice/docker-<id>.scope`, `/lxc.payload.<name>`,
/// `/machine.slice/libpod-<id>.scope`, ...).
const ENGINES: [&str; 5] = ["docker", "kubepods", "containerd", "lxc", "libpod"];

/// Where builds with debug assertions look for container markers instead of `/` (tests).
pub const PROBE_ROOT_ENV: &str = "EDS_UPGRADE_PROBE_ROOT";

/// Where to look: a root directory (for `/.dockerenv`, `/run/.containerenv`, `/proc/1/cgroup`)
/// and the value of the `container` environment variable. Tests point it at a fake root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProbe {
    /// The file system root to read below (`/` on a real system).
    pub root: PathBuf,
    /// `container` from the environment, set by systemd-nspawn, podman and LXC.
    pub container_env: Option<OsString>,
}

impl ContainerProbe {
    /// This process's view: the real root and environment. Builds with debug assertions (the
    /// tests', which may run in a container themselves) read below `EDS_UPGRADE_PROBE_ROOT`
    /// instead when it is set, without the environment; release builds always probe the host.
    pub fn host() -> ContainerProbe {
        #[cfg(debug_assertions)]
        if let Some(root) = std::env::var_os(PROBE_ROOT_ENV).filter(|r| !r.is_empty()) {
            return ContainerProbe { root: PathBuf::from(root), container_env: None };
        }
        ContainerProbe { root: PathBuf::from("/"), container_env: std::env::var_os("container") }
    }

    /// What shows that this is a container, or `None` when nothing does.
    pub fn evidence(&self) -> Option<String> {
        if let Some(value) = self.container_env.as_ref().filter(|v| !v.is_empty()) {
            return Some(format!("the environment has container={}", value.to_string_lossy()));
        }
        for marker in [".dockerenv", "run/.containerenv"] {
            let path = self.root.join(marker);
            if path.exists() {
                return Some(format!("{} exists", path.display()));
            }
        }
        let cgroup = self.root.join("proc/1/cgroup");
        let text = std::fs::read_to_string(&cgroup).ok()?;
        text.lines().find_map(engine_in_cgroup_line).map(|engine| format!("{} names {engine}", cgroup.display()))
    }
}

/// The container engine a `/proc/<pid>/cgroup` line (`id:controllers:path`) names in its path:
/// a path component that is an engine's name or starts with it followed by `-` or `.`
/// (`docker-<id>.scope`, `kubepods.slice`, `lxc.payload.web`).
fn engine_in_cgroup_line(line: &str) -> Option<&'static str> {
    let path = line.splitn(3, ':').nth(2)?;
    path.split('/').find_map(|component| {
        let head = component.split(['-', '.']).next().unwrap_or(component);
        ENGINES.into_iter().find(|engine| *engine == head)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::path::Path;

    /// An empty file at `relative` below `root`.
    fn touch(root: &Path, relative: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    fn probe(root: &Path) -> ContainerProbe {
        ContainerProbe { root: root.to_owned(), container_env: None }
    }

    fn with_cgroup(text: &str) -> (tempfile::TempDir, ContainerProbe) {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "proc/1/cgroup");
        std::fs::write(t.path().join("proc/1/cgroup"), text).unwrap();
        let p = probe(t.path());
        (t, p)
    }

    #[test]
    fn a_plain_host_is_no_container_even_with_rt_in_its_cgroups() {
        // A cgroup v1 host: `rt` appears in cpuset, hugetlb, rdma (EDS's quirk saw a container).
        let (_t, p) = with_cgroup(
            "12:rdma:/\n11:hugetlb:/\n10:cpuset:/\n9:cpu,cpuacct:/init.scope\n1:name=systemd:/init.scope\n",
        );
        assert_eq!(p.evidence(), None);
        let (_t, p) = with_cgroup("0::/init.scope\n");
        assert_eq!(p.evidence(), None);
        let (_t, p) = with_cgroup("0::/system.slice/dockerd-helper.service\n0::/user.slice/lxcfs-tools\n");
        assert_eq!(p.evidence(), None, "a name that only starts like an engine's is none of them");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(probe(empty.path()).evidence(), None, "no /proc/1/cgroup at all");
    }

    #[test]
    fn container_engines_cgroups_give_it_away() {
        for (line, engine) in [
            ("12:cpuset:/docker/0123abcd", "docker"),
            ("0::/system.slice/docker-0123abcd.scope", "docker"),
            ("11:memory:/kubepods/burstable/pod12/0123", "kubepods"),
            ("0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-0123.scope", "kubepods"),
            ("0::/lxc.payload.web", "lxc"),
            ("4:pids:/lxc/web", "lxc"),
            ("0::/machine.slice/libpod-0123.scope", "libpod"),
            ("0::/containerd/default/0123", "containerd"),
        ] {
            let (_t, p) = with_cgroup(&format!("1:name=systemd:/\n{line}\n"));
            let evidence = p.evidence().unwrap_or_else(|| panic!("{line} not seen"));
            assert!(evidence.ends_with(&format!("cgroup names {engine}")), "{line}: {evidence}");
        }
    }

    #[test]
    fn marker_files_and_the_container_variable_give_it_away() {
        for marker in [".dockerenv", "run/.containerenv"] {
            let t = tempfile::tempdir().unwrap();
            touch(t.path(), marker);
            let evidence = probe(t.path()).evidence().unwrap();
            assert!(evidence.contains(marker) && evidence.ends_with("exists"), "{evidence}");
        }
        let t = tempfile::tempdir().unwrap();
        let p = ContainerProbe { root: t.path().to_owned(), container_env: Some("podman".into()) };
        assert_eq!(p.evidence().unwrap(), "the environment has container=podman");
        let p = ContainerProbe { root: t.path().to_owned(), container_env: Some("".into()) };
        assert_eq!(p.evidence(), None, "an empty variable says nothing");
    }
}
