//! A node's memory figures, read from `osctl version -o json` and `osctl
//! services -o json`: shared by the boot and journey benchmarks. A figure
//! the node does not report is an error naming it, never a 0 or a NaN.

use anyhow::{Context as _, bail};

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A KiB figure of one node's `version` entry.
fn kib(v: &serde_json::Value, field: &str) -> anyhow::Result<u64> {
    let node = v.get(0).unwrap_or(v);
    node[field].as_u64().filter(|k| *k > 0).with_context(|| format!("osctl version reports no {field}: {node}"))
}

/// The sizes (bytes) a person flashing or booting the image cares about,
/// from its build manifest: the image file, the root, the kernel and the
/// initramfs (and the UKI on UEFI boards); the first three must be there.
pub fn image_sizes(m: &image_builder::Manifest) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    for (name, required) in
        [("image", true), ("root.squashfs", true), ("vmlinuz", true), ("initramfs", true), ("uki", false)]
    {
        match m.part(name) {
            Some(p) => out.push((name, p.size)),
            None if required => bail!("the manifest of the {} image lists no {name}", m.board),
            None => {}
        }
    }
    Ok(out)
}

/// Guest RAM in use (MemTotal − MemAvailable) and in all, in KiB.
pub fn guest_ram(v: &serde_json::Value) -> anyhow::Result<(u64, u64)> {
    let (total, available) = (kib(v, "memory_total_kib")?, kib(v, "memory_available_kib")?);
    if available > total {
        bail!("osctl version reports more memory available ({available} KiB) than in all ({total} KiB)");
    }
    Ok((total - available, total))
}

/// init's resident set, in KiB.
pub fn init_rss(v: &serde_json::Value) -> anyhow::Result<u64> {
    kib(v, "init_rss_kib")
}

/// Each service's name and resident set (KiB); a running service without
/// one is an error.
pub fn service_rss(services: &serde_json::Value) -> anyhow::Result<Vec<(String, u64)>> {
    let list = services.as_array().with_context(|| format!("osctl services is not a list: {services}"))?;
    if list.is_empty() {
        bail!("osctl services lists no service");
    }
    list.iter()
        .map(|s| {
            let name = s["name"].as_str().with_context(|| format!("a service without a name: {s}"))?;
            let rss = s["rss_kib"]
                .as_u64()
                .filter(|k| *k > 0)
                .with_context(|| format!("service {name} reports no RSS: {s}"))?;
            Ok((name.to_string(), rss))
        })
        .collect()
}

/// Prints a node's memory: guest RAM in use, init's and each service's
/// resident set, and Plinth's own processes together (all but
/// containerd), from its `osctl version` and `osctl services` as JSON.
pub fn print(when: &str, version: &serde_json::Value, services: &serde_json::Value) -> anyhow::Result<()> {
    let (used, total) = guest_ram(version)?;
    println!("{when}: guest RAM in use {:.1} MiB of {:.1} MiB", mib(used), mib(total));
    let mut ours = mib(init_rss(version)?);
    println!("  init RSS {ours:.1} MiB");
    for (name, rss) in service_rss(services)? {
        let rss = mib(rss);
        println!("  {name} RSS {rss:.1} MiB");
        if name != "containerd" {
            ours += rss;
        }
    }
    println!("  Plinth's own processes (init, apid, orchestrator) together: {ours:.1} MiB RSS");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_figure_is_an_error_naming_it() {
        let v = serde_json::json!([{"memory_total_kib": 524288, "memory_available_kib": 262144, "init_rss_kib": 4096}]);
        assert_eq!(guest_ram(&v).unwrap(), (262144, 524288));
        assert_eq!(init_rss(&v).unwrap(), 4096);
        let e = guest_ram(&serde_json::json!([{"memory_total_kib": 1}])).unwrap_err().to_string();
        assert!(e.contains("memory_available_kib"), "{e}");
        let e = init_rss(&serde_json::json!([{"init_rss_kib": 0}])).unwrap_err().to_string();
        assert!(e.contains("init_rss_kib"), "{e}");
        let s = serde_json::json!([{"name": "apid", "rss_kib": 8192}, {"name": "containerd"}]);
        let e = service_rss(&s).unwrap_err().to_string();
        assert!(e.contains("containerd reports no RSS"), "{e}");
        assert!(service_rss(&serde_json::json!([])).is_err());
    }
}
