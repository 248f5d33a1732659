//! The container runtime an image carries: Debian's containerd (with its
//! runc shim, and `ctr`, which the kubelet imports image archives with),
//! runc, the CNI plugins of the kubelet's network, iptables (nftables
//! backend) with its extensions for the plugins' NAT rules, the shared
//! libraries all of them link — nothing else — and containerd's config;
//! and Debian's etcd server, for control planes of an HA cluster.
//! Copied from the build host's packages for an image of the host's
//! architecture; for another architecture, from the same Debian packages
//! for it ([`crate::userland`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use machinery::layout;

use crate::userland::Userland;
use crate::{BuildError, tools};

/// Programs copied to the same path in the root, with their Debian package.
pub const PROGRAMS: &[(&str, &str)] = &[
    (layout::ROOT_CONTAINERD, "containerd"),
    ("/usr/bin/containerd-shim-runc-v2", "containerd"),
    ("/usr/bin/ctr", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    (IPTABLES, "iptables"),
    // An HA control plane's store (cluster.datastore = "etcd"); init runs
    // it only then. The server alone: no etcdctl (osctl etcd … instead).
    (layout::ROOT_ETCD, "etcd-server"),
];

/// iptables' multi-call program, and the names the CNI plugins call it by.
const IPTABLES: &str = "/usr/sbin/xtables-nft-multi";
const IPTABLES_NAMES: &[&str] =
    &["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"];

/// iptables loads its match and target extensions from here at run time.
fn xtables_dir(u: &Userland) -> String {
    format!("/usr/lib/{}/xtables", u.arch().multiarch())
}

/// containerd's config: CRI with runc and the cgroupfs driver (init is the
/// only process manager; there is no systemd), the sandbox image from
/// [`layout::PAUSE_ARCHIVE`], and the kubelet's CNI network.
pub fn containerd_config() -> String {
    format!(
        r#"# Written by image-builder; see machinery::layout.
version = 2
root = "{root}"
state = "/run/containerd"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
        root = layout::CONTAINERD_ROOT,
        socket = layout::CONTAINERD_SOCKET,
        pause = layout::PAUSE_IMAGE,
        cni_bin = layout::CNI_BIN_DIR,
        cni_conf = layout::CNI_CONF_DIR,
    )
}

/// Checks that the host has every program (naming the package to
/// install); an image for another architecture downloads them instead.
pub fn require(u: &Userland) -> Result<(), BuildError> {
    if u.arch().debian() != crate::kernel::HOST_ARCH {
        return Ok(());
    }
    for (path, package) in PROGRAMS {
        tools::require(path, package)?;
    }
    Ok(())
}

/// Copies the runtime into the root tree at `stage`.
pub fn stage(stage: &Path, u: &Userland) -> Result<(), BuildError> {
    let rel = |p: &Path| stage.join(p.strip_prefix("/").unwrap_or(p));
    let mut libraries = BTreeSet::new();
    for (path, package) in PROGRAMS {
        let program = u.file(path, package)?;
        libraries.extend(u.libraries(&program)?);
        crate::copy(&program, &rel(Path::new(path)), 0o755)?;
    }
    for name in IPTABLES_NAMES {
        let link = rel(&Path::new("/usr/sbin").join(name));
        std::os::unix::fs::symlink("xtables-nft-multi", &link).map_err(|e| BuildError::io("link", &link, e))?;
    }
    let ext_path = xtables_dir(u);
    let ext = u.dir(&ext_path, "iptables")?;
    let entries = std::fs::read_dir(&ext).map_err(|e| BuildError::io("read (apt install iptables)", &ext, e))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "so") {
            libraries.extend(u.libraries(&p)?);
            let at = PathBuf::from(&ext_path).join(e.file_name());
            crate::copy(&p, &rel(&at), 0o644)?;
        }
    }
    for lib in libraries {
        if !rel(&lib.at).exists() {
            crate::copy(&lib.from, &rel(&lib.at), 0o755)?;
        }
    }
    crate::write(&rel(Path::new(layout::ROOT_CONTAINERD_CONFIG)), containerd_config().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_is_toml_naming_our_paths() {
        let v: toml::Value = toml::from_str(&containerd_config()).unwrap();
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(v["grpc"]["address"].as_str(), Some(layout::CONTAINERD_SOCKET));
        assert_eq!(cri["sandbox_image"].as_str(), Some(layout::PAUSE_IMAGE));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some(layout::CNI_CONF_DIR));
        assert_eq!(cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(), Some(false));
        // Every program the kubelet and containerd execute is carried.
        for needed in ["/usr/bin/ctr", "/usr/sbin/runc", "/usr/bin/containerd-shim-runc-v2", "/usr/lib/cni/bridge"] {
            assert!(PROGRAMS.iter().any(|(p, _)| *p == needed), "{needed}");
        }
    }
}
