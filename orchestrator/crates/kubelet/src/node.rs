//! The Node object (capacity from /proc, addresses, node info, conditions)
//! and its heartbeat: the Lease renewed every 10 s, the status re-posted
//! when a condition changes and at least every minute.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cri::v1;
use crate::{Kubelet, KubeletError};
use orchestrator_apimachinery::registry::{Part, now};

pub const LEASE_SECONDS: i64 = 40;
const RENEW: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// Until the node is first Ready, how often its status is checked: Ready
/// is reported as soon as it holds, not at the next heartbeat.
const UNTIL_READY: Duration = Duration::from_millis(100);

static REGISTERED: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
pub(crate) static FIRST_POD_RUNNING: AtomicBool = AtomicBool::new(false);

/// Logs a boot step (tracing target `boot_step`, field `step`) the first
/// time this process reaches it; the orchestrator binary records it for
/// init (`osctl boot-times`).
pub(crate) fn boot_step(reached: &AtomicBool, step: &'static str) {
    if !reached.swap(true, Ordering::Relaxed) {
        tracing::info!(target: "boot_step", step, "boot step reached");
    }
}
const MAX_PODS: u32 = 110;

/// The address of the default route's interface (no packet is sent), else loopback.
pub fn default_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// A field of /proc/meminfo in KiB.
fn meminfo_kib(field: &str) -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Plinth".into())
}

fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Capacity and allocatable: CPUs, memory, pods, and the kubelet directory's disk.
fn capacity(k: &Kubelet) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = meminfo_kib("MemTotal");
    let disk = nix::sys::statvfs::statvfs(&k.cfg.dir).map_or(0, |s| s.blocks() * s.fragment_size());
    json!({"cpu": cpus.to_string(), "memory": format!("{mem}Ki"), "pods": MAX_PODS.to_string(),
           "ephemeral-storage": format!("{}Ki", disk / 1024)})
}

fn arch() -> &'static str {
    if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }
}

async fn runtime_ready(k: &Kubelet) -> (bool, String) {
    let r = k.cri.runtime.clone().status(v1::StatusRequest { verbose: false }).await;
    let conds = match r {
        Ok(r) => r.into_inner().status.map(|s| s.conditions).unwrap_or_default(),
        Err(s) => return (false, format!("container runtime is down: {}", s.message())),
    };
    match conds.iter().find(|c| !c.status) {
        Some(c) => (false, format!("container runtime {} is false: {}: {}", c.r#type, c.reason, c.message)),
        None => (true, "kubelet is posting ready status".into()),
    }
}

/// Conditions, keeping transition times while a status stays.
async fn conditions(k: &Kubelet, old: &Value) -> Value {
    let (ready, msg) = runtime_ready(k).await;
    let avail = meminfo_kib("MemAvailable");
    let disk_low = nix::sys::statvfs::statvfs(&k.cfg.dir)
        .is_ok_and(|s| s.blocks() > 0 && (s.blocks_available() as f64 / s.blocks() as f64) < 0.1);
    let t = now();
    let cond = |kind: &str, status: bool, reason: &str, message: &str| {
        let s = if status { "True" } else { "False" };
        let since = old
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == s))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| t.clone().into());
        json!({"type": kind, "status": s, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": since})
    };
    json!([
        cond(
            "MemoryPressure",
            avail < 100 * 1024,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        cond("DiskPressure", disk_low, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", ready, if ready { "KubeletReady" } else { "KubeletNotReady" }, &msg),
    ])
}

/// Creates the Node (or takes over an existing one) and posts its status.
pub async fn register(k: &Arc<Kubelet>) -> Result<(), KubeletError> {
    let name = k.cfg.node_name.clone();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch()}},
        "spec": {"podCIDR": k.cfg.pod_cidr, "podCIDRs": [k.cfg.pod_cidr]},
    });
    match k.api.get("Node", None, &name).await {
        Ok(_) => {
            let cidr = k.cfg.pod_cidr.clone();
            k.api
                .modify("Node", None, &name, Part::Main, move |o| {
                    let changed = o.pointer("/spec/podCIDR").and_then(Value::as_str) != Some(&cidr);
                    o["spec"]["podCIDR"] = cidr.clone().into();
                    o["spec"]["podCIDRs"] = json!([cidr]);
                    changed
                })
                .await?
        }
        Err(e) if e.code == 404 => {
            k.api.create("Node", None, node).await?;
        }
        Err(e) => return Err(e.into()),
    }
    boot_step(&REGISTERED, "node-registered");
    // The lease first: a lease left stale by a reboot would have the node
    // lifecycle controller turn the Ready just posted into Unknown.
    renew_lease(k).await?;
    post_status(k).await
}

async fn post_status(k: &Kubelet) -> Result<(), KubeletError> {
    let version = k.cri.version().await.unwrap_or_default();
    let name = k.cfg.node_name.clone();
    let old = k.api.get("Node", None, &name).await?;
    let conds = conditions(k, &old).await;
    let ready = conds.as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
    let status = json!({
        "capacity": capacity(k),
        "allocatable": capacity(k),
        "addresses": [{"type": "InternalIP", "address": k.host_ip}, {"type": "Hostname", "address": hostname()}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": k.port.load(std::sync::atomic::Ordering::Relaxed)}},
        "nodeInfo": {
            "machineID": read("/etc/machine-id"),
            "systemUUID": read("/sys/class/dmi/id/product_uuid"),
            "bootID": read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": version,
            "kubeletVersion": orchestrator_apimachinery::discovery::version()["gitVersion"],
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": conds,
    });
    k.api
        .modify("Node", None, &name, Part::Status, move |o| {
            o["status"] = status.clone();
            true
        })
        .await?;
    if ready {
        boot_step(&READY, "node-ready");
    }
    Ok(())
}

/// Whether the posted conditions differ (ignoring heartbeat times) from what holds now.
async fn status_changed(k: &Kubelet) -> Result<bool, KubeletError> {
    let old = k.api.get("Node", None, &k.cfg.node_name).await?;
    let new = conditions(k, &old).await;
    let key = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].as_str().unwrap_or_default().into(), c["status"].as_str().unwrap_or_default().into()))
            .collect()
    };
    Ok(key(&new) != key(old.pointer("/status/conditions").unwrap_or(&Value::Null)))
}

async fn renew_lease(k: &Kubelet) -> Result<(), KubeletError> {
    let name = k.cfg.node_name.clone();
    let t = time::OffsetDateTime::now_utc();
    let micros = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
    let renew = micros.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let ns = Some("kube-node-lease");
    match k.api.get("Lease", ns, &name).await {
        Err(e) if e.code == 404 => {
            let node_uid = k.api.get("Node", None, &name).await?["metadata"]["uid"].clone();
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew},
            });
            k.api.create("Lease", ns, lease).await?;
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {
            let holder = name.clone();
            k.api
                .modify("Lease", ns, &name, Part::Main, move |l| {
                    l["spec"]["renewTime"] = renew.clone().into();
                    l["spec"]["holderIdentity"] = holder.clone().into();
                    l["spec"]["leaseDurationSeconds"] = LEASE_SECONDS.into();
                    true
                })
                .await?
        }
    }
    Ok(())
}

/// Renews the lease every 10 s; re-posts the node status when it changed
/// (checked every 100 ms until the node is first Ready) or a minute passed.
pub async fn heartbeat(k: Arc<Kubelet>) {
    let mut renewed = tokio::time::Instant::now();
    let mut posted = renewed;
    loop {
        let ready = READY.load(Ordering::Relaxed);
        tokio::time::sleep(if ready { RENEW } else { UNTIL_READY }).await;
        if renewed.elapsed() >= RENEW {
            if let Err(e) = renew_lease(&k).await {
                tracing::warn!("renew the node lease: {e}");
            }
            renewed = tokio::time::Instant::now();
        }
        let due = posted.elapsed() >= STATUS_EVERY;
        match status_changed(&k).await {
            Ok(changed) if changed || due => match post_status(&k).await {
                Ok(()) => posted = tokio::time::Instant::now(),
                Err(e) => tracing::warn!("post node status: {e}"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!("read node status: {e}"),
        }
    }
}
