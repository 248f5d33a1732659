//! The Node object (capacity from /proc, addresses, node info, conditions)
//! and its heartbeat, bounded for an SD card: the Lease (60 s) renewed
//! every 20 s, 2 s after a failed renewal; the status re-posted when a
//! condition changes and otherwise every 5 minutes (upstream's
//! `nodeStatusReportFrequency`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use orchestrator_apimachinery::stateful::LOCAL_PATH_ROOT;
use serde_json::{Value, json};

use crate::cri::v1;
use crate::disk;
use crate::{Kubelet, KubeletError};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Part;
use orchestrator_apimachinery::typed;

/// Upstream's kubelet holds a 40 s Lease and renews it every 10 s (30 s
/// of slack, six writes a minute). Here a 60 s Lease renewed every 20 s:
/// half the writes, 40 s of slack for a slow card, a dead node noticed
/// after 60 s instead of 40.
pub const LEASE_SECONDS: i64 = 60;
const RENEW: Duration = Duration::from_secs(20);
/// After a failed renewal, the next try.
const RETRY: Duration = Duration::from_secs(2);
/// Upstream's `nodeStatusReportFrequency`: an unchanged status is posted this often.
const STATUS_EVERY: Duration = Duration::from_secs(300);
/// How often the conditions are computed (upstream's `nodeStatusUpdateFrequency`).
const CHECK_EVERY: Duration = Duration::from_secs(10);
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
fn capacity(k: &Kubelet) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = meminfo_kib("MemTotal");
    let disk = nix::sys::statvfs::statvfs(&k.cfg.dir).map_or(0, |s| s.blocks() * s.fragment_size());
    [
        ("cpu", cpus.to_string()),
        ("memory", format!("{mem}Ki")),
        ("pods", MAX_PODS.to_string()),
        ("ephemeral-storage", format!("{}Ki", disk / 1024)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
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

/// Now, to the second (a condition's times, as upstream's `Time`).
fn now_seconds() -> Timestamp {
    Timestamp::from_second(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, to the microsecond (a Lease's `MicroTime`).
fn now_micros() -> Timestamp {
    let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    Timestamp::from_microsecond(i64::try_from(micros).unwrap_or_default()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The Node as stored (typed), for its conditions and uid.
async fn stored_node(k: &Kubelet) -> Result<Node, KubeletError> {
    let o = k.api.get("Node", None, &k.cfg.node_name).await?;
    serde_json::from_value(o).map_err(|e| ApiError::internal(format!("Node {}: {e}", k.cfg.node_name)).into())
}

fn stored_conditions(node: &Node) -> &[NodeCondition] {
    node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default()
}

/// Conditions, keeping transition times while a status stays.
async fn conditions(k: &Kubelet, old: &[NodeCondition]) -> Vec<NodeCondition> {
    let (ready, msg) = runtime_ready(k).await;
    let avail = meminfo_kib("MemAvailable");
    let disk_low = match disk::Usage::of(&k.cfg.dir) {
        Ok(u) => u.pressure(),
        Err(e) => {
            tracing::warn!("disk pressure: {e}");
            false
        }
    };
    let (disk_reason, disk_message) = disk::condition(disk_low);
    let t = Time(now_seconds());
    let cond = |kind: &str, status: bool, reason: &str, message: &str| {
        let s = if status { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c.type_ == kind && c.status == s)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| t.clone());
        NodeCondition {
            type_: kind.to_string(),
            status: s.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(t.clone()),
            last_transition_time: Some(since),
        }
    };
    vec![
        cond(
            "MemoryPressure",
            avail < 100 * 1024,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        cond("DiskPressure", disk_low, disk_reason, disk_message),
        cond("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", ready, if ready { "KubeletReady" } else { "KubeletNotReady" }, &msg),
    ]
}

/// The Node this kubelet registers (its pod CIDR when it has one).
fn node_object(cfg: &crate::Config) -> Node {
    let name = cfg.node_name.clone();
    let local_root = crate::claims::local_path_root(&cfg.dir).to_string_lossy().into_owned();
    let labels = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ];
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            annotations: Some([(LOCAL_PATH_ROOT.to_string(), local_root)].into_iter().collect()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cfg.pod_cidr.clone()).filter(|c| !c.is_empty()),
            pod_cidrs: Some(vec![cfg.pod_cidr.clone()]).filter(|_| !cfg.pod_cidr.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod CIDR the control plane's IPAM assigned to this node
/// (`spec.podCIDR`): registers the Node without one when it does not
/// exist, then waits for it (the pod network cannot start before).
pub async fn assigned_pod_cidr(api: &orchestrator_client::Api, cfg: &crate::Config) -> String {
    let mut waiting = false;
    loop {
        match api.get("Node", None, &cfg.node_name).await {
            Ok(o) => {
                let node: Node = match typed::decode(o, "Node") {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(node = cfg.node_name, "read the Node for its pod CIDR: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Some(c) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    tracing::info!(node = cfg.node_name, "pod CIDR {c} (spec.podCIDR)");
                    return c.to_string();
                }
                if !waiting {
                    tracing::info!(node = cfg.node_name, "waiting for the control plane to assign spec.podCIDR");
                    waiting = true;
                }
            }
            Err(e) if e.code == 404 => match to_json(&node_object(cfg)) {
                Ok(node) => match api.create("Node", None, node).await {
                    Ok(_) => continue,
                    Err(e) => tracing::warn!(node = cfg.node_name, "register the Node: {e}"),
                },
                Err(e) => tracing::warn!(node = cfg.node_name, "{e}"),
            },
            Err(e) => tracing::warn!(node = cfg.node_name, "read the Node for its pod CIDR: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Creates the Node (or takes over an existing one) and posts its status.
pub async fn register(k: &Arc<Kubelet>) -> Result<(), KubeletError> {
    let name = k.cfg.node_name.clone();
    let local_root = crate::claims::local_path_root(&k.cfg.dir).to_string_lossy().into_owned();
    let node = node_object(&k.cfg);
    match k.api.get("Node", None, &name).await {
        Ok(_) => {
            let cidr = k.cfg.pod_cidr.clone();
            k.api
                // A typed change writes only the fields it sets: the rest of the stored Node stays.
                .modify("Node", None, &name, Part::Main, move |o| {
                    let changed = typed::change_as(o, "Node", |n: &mut Node| {
                        let spec = n.spec.get_or_insert_with(Default::default);
                        let notes = n.metadata.annotations.get_or_insert_with(Default::default);
                        let changed =
                            spec.pod_cidr.as_ref() != Some(&cidr) || notes.get(LOCAL_PATH_ROOT) != Some(&local_root);
                        spec.pod_cidr = Some(cidr.clone());
                        spec.pod_cidrs = Some(vec![cidr.clone()]);
                        notes.insert(LOCAL_PATH_ROOT.to_string(), local_root.clone());
                        changed
                    });
                    changed.unwrap_or_else(|e| {
                        tracing::warn!("register the Node: {e}");
                        false
                    })
                })
                .await?
        }
        Err(e) if e.code == 404 => {
            k.api.create("Node", None, to_json(&node)?).await?;
        }
        Err(e) => return Err(e.into()),
    }
    boot_step(&REGISTERED, "node-registered");
    // The lease first: a lease left stale by a reboot would have the node
    // lifecycle controller turn the Ready just posted into Unknown.
    renew_lease(k).await?;
    post_status(k).await
}

fn to_json(o: &impl serde::Serialize) -> Result<Value, KubeletError> {
    serde_json::to_value(o).map_err(|e| ApiError::internal(format!("encode: {e}")).into())
}

async fn post_status(k: &Kubelet) -> Result<(), KubeletError> {
    let version = k.cri.version().await.unwrap_or_default();
    let name = k.cfg.node_name.clone();
    let old = stored_node(k).await?;
    let conds = conditions(k, stored_conditions(&old)).await;
    let ready = conds.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let status_of = |cs: &[NodeCondition], kind: &str| cs.iter().find(|c| c.type_ == kind).map(|c| c.status.clone());
    let pressure = status_of(&conds, "DiskPressure").as_deref() == Some("True");
    let disk_event = disk::transition(status_of(stored_conditions(&old), "DiskPressure").as_deref(), pressure);
    let address = |type_: &str, address: &str| NodeAddress { type_: type_.into(), address: address.into() };
    let status = NodeStatus {
        capacity: Some(capacity(k)),
        allocatable: Some(capacity(k)),
        addresses: Some(vec![address("InternalIP", &k.host_ip), address("Hostname", &hostname())]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(k.port.load(std::sync::atomic::Ordering::Relaxed)),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            container_runtime_version: version,
            kubelet_version: orchestrator_apimachinery::discovery::version()["gitVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            kube_proxy_version: String::new(),
            operating_system: "linux".into(),
            architecture: arch().into(),
            ..Default::default()
        }),
        conditions: Some(conds),
        ..Default::default()
    };
    let status = to_json(&status)?;
    k.api
        .modify("Node", None, &name, Part::Status, move |o| {
            // The kubelet's fields replace theirs; any other field of the stored status stays.
            if !o.get("status").is_some_and(Value::is_object) {
                o["status"] = json!({});
            }
            for (field, value) in status.as_object().into_iter().flatten() {
                o["status"][field] = value.clone();
            }
            true
        })
        .await?;
    if ready {
        boot_step(&READY, "node-ready");
    }
    if let Some(reason) = disk_event {
        node_event(k, reason).await;
    }
    Ok(())
}

/// Records a change of the Node's state as the upstream kubelet does: an
/// Event in `default` about the Node (its uid is its name there too).
async fn node_event(k: &Kubelet, reason: &str) {
    let name = &k.cfg.node_name;
    let t = orchestrator_apimachinery::registry::now();
    let suffix = &orchestrator_apimachinery::registry::new_uid().replace('-', "")[..16];
    let e = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{suffix}"), "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": name, "uid": name},
        "reason": reason, "message": format!("Node {name} status is now: {reason}"), "type": "Normal",
        "source": {"component": "kubelet", "host": name},
        "firstTimestamp": t, "lastTimestamp": t, "count": 1,
        "reportingComponent": "kubelet", "reportingInstance": name,
    });
    if let Err(e) = k.api.create("Event", Some("default"), e).await {
        tracing::warn!("record the node event {reason}: {e}");
    }
}

/// Whether the posted conditions differ (ignoring heartbeat times) from what holds now.
async fn status_changed(k: &Kubelet) -> Result<bool, KubeletError> {
    let old = stored_node(k).await?;
    let old = stored_conditions(&old);
    let new = conditions(k, old).await;
    let key = |cs: &[NodeCondition]| -> Vec<(String, String)> {
        cs.iter().map(|c| (c.type_.clone(), c.status.clone())).collect()
    };
    Ok(key(&new) != key(old))
}

async fn renew_lease(k: &Kubelet) -> Result<(), KubeletError> {
    let name = k.cfg.node_name.clone();
    let t = time::OffsetDateTime::now_utc();
    let micros = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
    let renew = micros.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let ns = Some("kube-node-lease");
    match k.api.get("Lease", ns, &name).await {
        Err(e) if e.code == 404 => {
            let node_uid = stored_node(k).await?.metadata.uid.unwrap_or_default();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: ns.map(str::to_string),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node_uid,
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS as i32),
                    renew_time: Some(MicroTime(now_micros())),
                    ..Default::default()
                }),
            };
            k.api.create("Lease", ns, to_json(&lease)?).await?;
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {
            let holder = name.clone();
            k.api
                // Three fields of the stored Lease: a patch on its JSON, which keeps the rest.
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

/// Renews the lease every [`RENEW`] ([`RETRY`] after a failure); checks
/// the conditions every [`CHECK_EVERY`] (every 100 ms until the node is
/// first Ready) and re-posts the status when they changed or
/// [`STATUS_EVERY`] passed.
pub async fn heartbeat(k: Arc<Kubelet>) {
    let mut renew_due = tokio::time::Instant::now() + RENEW;
    let mut posted = tokio::time::Instant::now();
    loop {
        let ready = READY.load(Ordering::Relaxed);
        let check = tokio::time::Instant::now() + if ready { CHECK_EVERY } else { UNTIL_READY };
        tokio::time::sleep_until(check.min(renew_due)).await;
        if tokio::time::Instant::now() >= renew_due {
            renew_due = match renew_lease(&k).await {
                Ok(()) => tokio::time::Instant::now() + RENEW,
                Err(e) => {
                    tracing::warn!("renew the node lease: {e}");
                    tokio::time::Instant::now() + RETRY
                }
            };
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
