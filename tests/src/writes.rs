//! The write budget's figures: bytes written to the node's disks
//! (`osctl version -o json`'s `disks`, from the guest's /proc/diskstats)
//! and by each writer (init's and each service's `/proc/PID/io`
//! `write_bytes`, from `version` and `services -o json`), read twice and
//! turned into bytes per hour. A figure the node does not report is an
//! error naming it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Ten busybox web servers probed as upstream's defaults probe (every 10 s).
pub const TEN_PODS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probed
spec:
  replicas: 10
  selector:
    matchLabels: {app: probed}
  template:
    metadata:
      labels: {app: probed}
    spec:
      containers:
      - name: web
        image: docker.io/library/busybox:plinth
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 10
        livenessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 10
"#;

/// What the node had written at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// Block device → bytes written since boot.
    pub disks: BTreeMap<String, u64>,
    /// Writer (`init`, then each service) → bytes its process caused to be written.
    pub writers: BTreeMap<String, u64>,
}

impl Snapshot {
    /// From `osctl version -o json` and `osctl services -o json` of one node.
    pub fn from_json(version: &serde_json::Value, services: &serde_json::Value) -> anyhow::Result<Snapshot> {
        let v = version.get(0).unwrap_or(version);
        let disks = v["disks"]
            .as_array()
            .with_context(|| format!("osctl version reports no disks: {v}"))?
            .iter()
            .map(|d| {
                let name = d["device"].as_str().with_context(|| format!("a disk without a name: {d}"))?;
                let bytes =
                    d["written_bytes"].as_u64().with_context(|| format!("disk {name} without written_bytes"))?;
                Ok((name.to_string(), bytes))
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        if disks.is_empty() {
            bail!("osctl version lists no disk written to: {v}");
        }
        let mut writers = BTreeMap::new();
        writers.insert(
            "init".to_string(),
            v["init_write_bytes"]
                .as_u64()
                .with_context(|| format!("osctl version reports no init_write_bytes: {v}"))?,
        );
        for s in services.as_array().with_context(|| format!("osctl services is not a list: {services}"))? {
            let name = s["name"].as_str().with_context(|| format!("a service without a name: {s}"))?;
            let bytes = s["write_bytes"].as_u64().with_context(|| format!("service {name} reports no write_bytes"))?;
            writers.insert(name.to_string(), bytes);
        }
        Ok(Snapshot { at: Instant::now(), disks, writers })
    }
}

/// Bytes per hour from `before` to `after`: each disk, each writer, and
/// what no process accounts for on the busiest disk (the kernel's ext4
/// journal and metadata, processes that are not services: shims, runc,
/// containers).
#[derive(Debug, Clone)]
pub struct Budget {
    pub window: Duration,
    pub disks: Vec<(String, f64)>,
    pub writers: Vec<(String, f64)>,
    pub unaccounted: f64,
    /// The disk has the Raspberry Pi layout (for [`partition_label`]).
    pub pi_layout: bool,
}

/// The label of partition `device` (`vda5`, `mmcblk0p7`, `nvme0n1p4`) in
/// the image's layout (`machinery::layout`): EFI, ROOT-A, ROOT-B, STATE,
/// EPHEMERAL; on the Pi layout BOOT, BOOT-A, BOOT-B first.
pub fn partition_label(device: &str, pi_layout: bool) -> Option<&'static str> {
    use machinery::layout::*;
    let digits = device.len() - device.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (disk, n) = device.split_at(device.len() - digits);
    let is_partition = if disk.starts_with("mmcblk") || disk.starts_with("nvme") { disk.ends_with('p') } else { true };
    let n: usize = n.parse().ok()?;
    let labels: &[&'static str] = if pi_layout {
        &[RPI_AUTOBOOT, BOOT_A, BOOT_B, ROOT_A, ROOT_B, STATE, EPHEMERAL]
    } else {
        &[EFI, ROOT_A, ROOT_B, STATE, EPHEMERAL]
    };
    if !is_partition || n == 0 {
        return None;
    }
    labels.get(n - 1).copied()
}

pub fn budget(before: &Snapshot, after: &Snapshot, pi_layout: bool) -> anyhow::Result<Budget> {
    let window = after.at.duration_since(before.at);
    if window.is_zero() {
        bail!("the two snapshots were taken at the same moment");
    }
    let per_hour = |bytes: u64| bytes as f64 * 3600.0 / window.as_secs_f64();
    let delta = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> Vec<(String, f64)> {
        b.iter()
            .map(|(name, end)| {
                // A restarted service's counter starts again: take what the new process wrote.
                let start = a.get(name).copied().filter(|s| s <= end).unwrap_or(0);
                (name.clone(), per_hour(end - start))
            })
            .collect()
    };
    let disks = delta(&before.disks, &after.disks);
    let writers = delta(&before.writers, &after.writers);
    // The whole disk (the device with the most written) minus every writer.
    let busiest = disks.iter().map(|(_, b)| *b).fold(0.0, f64::max);
    let unaccounted = (busiest - writers.iter().map(|(_, b)| b).sum::<f64>()).max(0.0);
    Ok(Budget { window, disks, writers, unaccounted, pi_layout })
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: f64| b / 1048576.0;
        writeln!(f, "  (measured over {:.0} s, scaled to an hour)", self.window.as_secs_f64())?;
        for (name, b) in &self.disks {
            match partition_label(name, self.pi_layout) {
                Some(label) => writeln!(f, "  disk {name} ({label}): {:.2} MiB/h", mib(*b))?,
                None => writeln!(f, "  disk {name}: {:.2} MiB/h", mib(*b))?,
            }
        }
        for (name, b) in &self.writers {
            let what = match name.as_str() {
                "init" => " (init's state on STATE; service logs stay in its RAM journal)",
                "orchestrator" => " (the store's SQLite and its WAL, the kubelet's files)",
                "containerd" => " (its metadata db, images, snapshots)",
                _ => "",
            };
            writeln!(f, "  writer {name}{what}: {:.2} MiB/h", mib(*b))?;
        }
        write!(
            f,
            "  the rest of the busiest disk: the kernel (ext4 journal, metadata) and non-service processes (shims writing container logs, runc, containers): {:.2} MiB/h",
            mib(self.unaccounted)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at: Instant, disk: u64, orchestrator: u64, init: u64) -> Snapshot {
        let version =
            serde_json::json!([{"init_write_bytes": init, "disks": [{"device": "vda", "written_bytes": disk}]}]);
        let services = serde_json::json!([{"name": "orchestrator", "write_bytes": orchestrator}]);
        let mut s = Snapshot::from_json(&version, &services).unwrap();
        s.at = at;
        s
    }

    #[test]
    fn bytes_per_hour_by_disk_and_writer() {
        let t = Instant::now();
        let b = budget(&snapshot(t, 1000, 100, 10), &snapshot(t + Duration::from_secs(360), 11000, 5100, 10), false)
            .unwrap();
        assert_eq!(b.disks, [("vda".to_string(), 100000.0)]);
        assert_eq!(b.writers, [("init".to_string(), 0.0), ("orchestrator".to_string(), 50000.0)]);
        assert_eq!(b.unaccounted, 50000.0);
        // A restarted writer: its new counter counts.
        let b = budget(&snapshot(t, 1000, 5000, 10), &snapshot(t + Duration::from_secs(3600), 2000, 300, 10), false)
            .unwrap();
        assert_eq!(b.writers[1], ("orchestrator".to_string(), 300.0));
    }

    #[test]
    fn partitions_are_named_by_the_layout() {
        assert_eq!(partition_label("vda5", false), Some("EPHEMERAL"));
        assert_eq!(partition_label("vda4", false), Some("STATE"));
        assert_eq!(partition_label("vda", false), None);
        assert_eq!(partition_label("mmcblk0p7", true), Some("EPHEMERAL"));
        assert_eq!(partition_label("mmcblk0", true), None);
        assert_eq!(partition_label("nvme0n1p1", false), Some("EFI"));
        assert_eq!(partition_label("nvme0n1", false), None);
        assert_eq!(partition_label("vda9", false), None);
    }

    #[test]
    fn a_missing_figure_is_an_error_naming_it() {
        let e = Snapshot::from_json(&serde_json::json!([{"disks": []}]), &serde_json::json!([])).unwrap_err();
        assert!(e.to_string().contains("no disk"), "{e}");
        let v = serde_json::json!([{"disks": [{"device": "vda", "written_bytes": 1}]}]);
        let e = Snapshot::from_json(&v, &serde_json::json!([])).unwrap_err();
        assert!(e.to_string().contains("init_write_bytes"), "{e}");
        let v = serde_json::json!([{"init_write_bytes": 0, "disks": [{"device": "vda", "written_bytes": 1}]}]);
        let e = Snapshot::from_json(&v, &serde_json::json!([{"name": "apid"}])).unwrap_err();
        assert!(e.to_string().contains("apid reports no write_bytes"), "{e}");
    }
}
