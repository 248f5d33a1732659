//! `/metrics/resource` on the kubelet's HTTPS endpoint, in upstream's
//! names and Prometheus text format (what metrics-server scrapes, and what
//! the API server's `metrics.k8s.io` reads): the node's cumulative CPU time
//! and working set from /proc, each running container's from CRI
//! `ListContainerStats` (containerd's cgroup figures). Counters are
//! cumulative; the reader turns two samples into a rate.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::KubeletError;
use crate::cri::{CriError, v1};
use crate::pod::{LABEL_CONTAINER_NAME, LABEL_MANAGED, LABEL_POD_NAME, LABEL_POD_NAMESPACE};

/// Linux reports /proc/stat in USER_HZ, 100 per second on every architecture Plinth runs on.
const USER_HZ: f64 = 100.0;

/// The node's cumulative CPU seconds (every state but idle and iowait) from /proc/stat.
pub fn node_cpu_seconds(stat: &str) -> Option<f64> {
    let fields: Vec<f64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    (fields.len() >= 4).then_some(busy / USER_HZ)
}

/// The node's working set in bytes from /proc/meminfo: MemTotal − MemAvailable.
pub fn node_working_set(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
    };
    Some((kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?)) * 1024)
}

/// One container's sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub cpu_seconds: f64,
    pub working_set: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The document: node series first (when /proc was readable), then one pair per container.
pub fn render(node: Option<(f64, u64)>, now_ms: i64, containers: &[ContainerSample]) -> String {
    let mut out = String::new();
    if let Some((cpu, mem)) = node {
        out.push_str("# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
        let _ = writeln!(out, "node_cpu_usage_seconds_total {cpu} {now_ms}");
        out.push_str("# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
        let _ = writeln!(out, "node_memory_working_set_bytes {mem} {now_ms}");
    }
    let series = |c: &ContainerSample| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            label(&c.container),
            label(&c.namespace),
            label(&c.pod)
        )
    };
    out.push_str("# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
    for c in containers {
        let _ = writeln!(out, "container_cpu_usage_seconds_total{} {} {}", series(c), c.cpu_seconds, c.at_ms);
    }
    out.push_str("# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
    for c in containers {
        let _ = writeln!(out, "container_memory_working_set_bytes{} {} {}", series(c), c.working_set, c.at_ms);
    }
    out
}

impl crate::Kubelet {
    /// The running containers' samples from CRI.
    pub(crate) async fn container_samples(&self) -> Result<Vec<ContainerSample>, KubeletError> {
        let managed = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
        let all = self.list_containers(managed.clone()).await?;
        let running = all.into_iter().filter(|c| c.state == v1::ContainerState::ContainerRunning as i32);
        let stats = self
            .cri
            .runtime
            .clone()
            .list_container_stats(v1::ListContainerStatsRequest {
                filter: Some(v1::ContainerStatsFilter { label_selector: managed, ..Default::default() }),
            })
            .await
            .map_err(CriError::call("ListContainerStats"))?
            .into_inner()
            .stats;
        let mut out = Vec::new();
        for c in running {
            let Some(s) = stats.iter().find(|s| s.attributes.as_ref().is_some_and(|a| a.id == c.id)) else { continue };
            let (Some(cpu), Some(mem)) = (&s.cpu, &s.memory) else { continue };
            let Some(used) = &cpu.usage_core_nano_seconds else { continue };
            let get = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            out.push(ContainerSample {
                namespace: get(LABEL_POD_NAMESPACE),
                pod: get(LABEL_POD_NAME),
                container: get(LABEL_CONTAINER_NAME),
                cpu_seconds: used.value as f64 / 1e9,
                working_set: mem.working_set_bytes.as_ref().map_or(0, |w| w.value),
                at_ms: cpu.timestamp / 1_000_000,
            });
        }
        Ok(out)
    }

    /// The `/metrics/resource` document.
    pub(crate) async fn resource_metrics(&self) -> Result<String, KubeletError> {
        let containers = self.container_samples().await?;
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let node = node_cpu_seconds(&read("/proc/stat")).zip(node_working_set(&read("/proc/meminfo")));
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        Ok(render(node, now_ms, &containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_figures_and_the_document() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(node_cpu_seconds(stat), Some(1.71));
        let meminfo = "MemTotal:        8000 kB\nMemFree:  100 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(node_working_set(meminfo), Some(2000 * 1024));
        let c = ContainerSample {
            namespace: "default".into(),
            pod: "web".into(),
            container: "httpd".into(),
            cpu_seconds: 0.25,
            working_set: 4096,
            at_ms: 1700000000123,
        };
        let doc = render(Some((1.5, 2048)), 1700000000000, &[c]);
        assert!(doc.contains("\nnode_cpu_usage_seconds_total 1.5 1700000000000\n"), "{doc}");
        assert!(doc.contains("\nnode_memory_working_set_bytes 2048 1700000000000\n"), "{doc}");
        assert!(doc.contains(
            "\ncontainer_cpu_usage_seconds_total{container=\"httpd\",namespace=\"default\",pod=\"web\"} 0.25 1700000000123\n"
        ));
        assert!(doc.contains(
            "\ncontainer_memory_working_set_bytes{container=\"httpd\",namespace=\"default\",pod=\"web\"} 4096 1700000000123\n"
        ));
    }
}
