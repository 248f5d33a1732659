//! The node's CNI network: a bridge with host-local IPAM over the node's
//! pod CIDR and portmap for hostPorts, written where the runtime reads it.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::Config;

pub const CONFIG_FILE: &str = "10-plinth.conflist";

pub fn config(cfg: &Config) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("plinth-{}", cfg.bridge),
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": true,
                "ipMasq": true,
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
    })
}

/// The pod network's gateway (the bridge's address): host-local gives it
/// the CIDR's first address.
pub fn gateway(pod_cidr: &str) -> Option<std::net::Ipv4Addr> {
    let net = pod_cidr.parse::<ipnet::Ipv4Net>().ok().filter(|n| n.prefix_len() < 31)?;
    net.hosts().next()
}

/// Writes the config (atomically: the runtime watches the directory).
pub fn write_config(cfg: &Config) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = &cfg.cni_conf_dir;
    std::fs::create_dir_all(dir).map_err(|e| (dir.clone(), e))?;
    let path = dir.join(CONFIG_FILE);
    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&config(cfg)).unwrap_or_default();
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(&tmp, text).map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| (path.clone(), e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateway_is_the_first_address() {
        assert_eq!(super::gateway("10.244.3.0/24"), Some("10.244.3.1".parse().unwrap()));
        assert_eq!(super::gateway("10.244.3.77/16"), Some("10.244.0.1".parse().unwrap()));
        assert_eq!(super::gateway("10.244.3.0/32"), None);
        assert_eq!(super::gateway("nonsense"), None);
    }
}
