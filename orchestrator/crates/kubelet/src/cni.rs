//! The node's CNI network: a bridge with host-local IPAM over the node's
//! pod CIDR and portmap for hostPorts, written where the runtime reads it.
//! No `ipMasq`: the kubelet masquerades the whole pod CIDR with one rule
//! (`orchestrator_node_net::masquerade`) instead of nine `iptables`
//! commands per sandbox in the plugin.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::Config;

pub const CONFIG_FILE: &str = "10-plinth.conflist";

/// The network's config; `mtu` is the pods' (the bridge's and each
/// veth's), none for the plugin's default.
pub fn config(cfg: &Config, mtu: Option<u32>) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": format!("plinth-{}", cfg.bridge),
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cfg.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": cfg.dir.join("ipam").to_string_lossy(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    if let Some(mtu) = mtu {
        c["plugins"][0]["mtu"] = mtu.into();
    }
    c
}

/// The pod network's gateway (the bridge's address): host-local gives it
/// the CIDR's first address.
pub fn gateway(pod_cidr: &str) -> Option<std::net::Ipv4Addr> {
    let net = pod_cidr.parse::<ipnet::Ipv4Net>().ok().filter(|n| n.prefix_len() < 31)?;
    net.hosts().next()
}

/// Writes the config (atomically: the runtime watches the directory).
pub fn write_config(cfg: &Config, mtu: Option<u32>) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = &cfg.cni_conf_dir;
    std::fs::create_dir_all(dir).map_err(|e| (dir.clone(), e))?;
    let path = dir.join(CONFIG_FILE);
    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&config(cfg, mtu)).unwrap_or_default();
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(&tmp, text).map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| (path.clone(), e))
}

/// Where libcni (in containerd) caches each attachment's ADD result, as
/// `<network>-<sandbox id>-<interface>`; a DEL reads it first.
pub const RESULTS_DIR: &str = "/var/lib/cni/results";

/// Whether a StopPodSandbox failure is libcni failing to read a cached result.
pub fn is_unreadable_cached_result(message: &str) -> bool {
    message.contains("cached result")
}

/// Removes the cached results of sandbox `id` in `dir` that are not JSON
/// (a power cut can leave one empty: every CNI DEL of that sandbox then
/// fails, and the pod can never be stopped); returns the files removed.
/// Results that parse are kept.
pub fn drop_unreadable_results(dir: &std::path::Path, id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if id.is_empty() || !name.contains(&format!("-{id}-")) {
            continue;
        }
        let path = e.path();
        let readable = std::fs::read(&path).is_ok_and(|b| serde_json::from_slice::<Value>(&b).is_ok());
        if !readable && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cached_result_cut_short_is_dropped_and_a_good_one_kept() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(d.path().join(name), text).unwrap();
        write("plinth-plinth0-abc123-eth0", "");
        write("plinth-plinth0-abc123-eth1", "{\"cniVersion\": \"1.0.0\"");
        write("plinth-plinth0-def456-eth0", "");
        write("plinth-plinth0-abc1234-eth0", "");
        write("plinth-plinth0-abc123-net1", "{\"cniVersion\": \"1.0.0\"}");
        let mut gone: Vec<String> = super::drop_unreadable_results(d.path(), "abc123")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        gone.sort();
        assert_eq!(gone, ["plinth-plinth0-abc123-eth0", "plinth-plinth0-abc123-eth1"]);
        for kept in ["plinth-plinth0-def456-eth0", "plinth-plinth0-abc1234-eth0", "plinth-plinth0-abc123-net1"] {
            assert!(d.path().join(kept).exists(), "{kept}");
        }
        assert!(super::drop_unreadable_results(&d.path().join("none"), "abc123").is_empty());
        let seen = "failed to destroy network for sandbox \"abc\": failed to get network \"plinth-plinth0\" cached result: decoding version from network config: unexpected end of JSON input";
        assert!(super::is_unreadable_cached_result(seen));
    }

    #[test]
    fn the_bridge_carries_the_pod_mtu_when_there_is_one() {
        let cfg = crate::Config {
            node_name: "n".into(),
            cri_socket: "/run/containerd.sock".into(),
            dir: "/var/lib/kubelet".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            pod_cidr: "10.244.3.0/24".into(),
            bridge: "plinth0".into(),
            node_ip: None,
            listen: "127.0.0.1:10250".parse().unwrap(),
            image_dir: None,
            log_rotation: Default::default(),
            service_proxy: true,
            pod_network: Default::default(),
        };
        let bridge = |mtu| super::config(&cfg, mtu)["plugins"][0].clone();
        assert_eq!(bridge(Some(1450))["mtu"], 1450);
        assert_eq!(bridge(Some(1450))["type"], "bridge");
        assert!(bridge(None).get("mtu").is_none());
    }

    #[test]
    fn the_gateway_is_the_first_address() {
        assert_eq!(super::gateway("10.244.3.0/24"), Some("10.244.3.1".parse().unwrap()));
        assert_eq!(super::gateway("10.244.3.77/16"), Some("10.244.0.1".parse().unwrap()));
        assert_eq!(super::gateway("10.244.3.0/32"), None);
        assert_eq!(super::gateway("nonsense"), None);
    }
}
