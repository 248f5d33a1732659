//! `meta.k8s.io/v1` Table responses, with upstream's columns (from
//! kubernetes/pkg/printers/internalversion/printers.go) for the kinds
//! `kubectl get` shows most.

use serde_json::{Value, json};

use crate::registry::parse_time;
use crate::resources::{CustomVersion, ResourceType};

/// (name, type, priority, description)
type Column = (&'static str, &'static str, u8, &'static str);

fn columns(kind: &str) -> Vec<Column> {
    let name: Column = ("Name", "string", 0, "Name must be unique within a namespace.");
    let age: Column = (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let containers: Column = ("Containers", "string", 1, "Names of each container in the template.");
    let images: Column = ("Images", "string", 1, "Images referenced by each container in the template.");
    let selector: Column = ("Selector", "string", 1, "Label selector for pods.");
    match kind {
        "Pod" => vec![
            name,
            ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            ("Status", "string", 0, "The aggregate status of the containers in this pod."),
            ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted."),
            age,
            ("IP", "string", 1, "IP address allocated to the pod."),
            ("Node", "string", 1, "Name of the node this pod is assigned to."),
            ("Nominated Node", "string", 1, "Name of the node this pod is nominated to run on."),
            ("Readiness Gates", "string", 1, "Readiness gates of this pod."),
        ],
        "Deployment" => vec![
            name,
            ("Ready", "string", 0, "Number of the pod with ready state"),
            (
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            containers,
            images,
            selector,
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            name,
            ("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            ("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            (
                "Ready",
                "integer",
                0,
                if kind == "ReplicaSet" {
                    "The number of ready replicas for this replica set."
                } else {
                    "The number of ready replicas for this replication controller."
                },
            ),
            age,
            containers,
            images,
            selector,
        ],
        "DaemonSet" => vec![
            name,
            ("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
            (
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least one daemon pod and are supposed to run the daemon pod.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            ("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod."),
            (
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            age,
            containers,
            images,
            selector,
        ],
        "CronJob" => vec![
            name,
            ("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            ("Timezone", "string", 0, "The time zone name for the given schedule."),
            ("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions."),
            ("Active", "integer", 0, "A list of pointers to currently running jobs."),
            ("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
            age,
            containers,
            images,
            selector,
        ],
        "Job" => vec![
            name,
            ("Status", "string", 0, "Status of the job."),
            (
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ),
            ("Duration", "string", 0, "Time required to complete the job."),
            age,
            containers,
            images,
            selector,
        ],
        "Service" => vec![
            name,
            ("Type", "string", 0, "The type of service."),
            ("Cluster-IP", "string", 0, "IP address of the service."),
            ("External-IP", "string", 0, "External IP addresses of the service."),
            ("Port(s)", "string", 0, "The ports exposed by the service."),
            age,
            (
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Node" => vec![
            name,
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            age,
            ("Version", "string", 0, "Kubelet Version reported by the node."),
            ("Internal-IP", "string", 1, "List of internal IPs in the node."),
            ("External-IP", "string", 1, "List of external IPs in the node."),
            ("OS-Image", "string", 1, "OS Image reported by the node."),
            ("Kernel-Version", "string", 1, "Kernel Version reported by the node."),
            ("Container-Runtime", "string", 1, "Container Runtime Version reported by the node."),
        ],
        "Namespace" => vec![name, ("Status", "string", 0, "The status of the namespace"), age],
        "ConfigMap" => vec![name, ("Data", "string", 0, "Data contains the configuration data."), age],
        "Secret" => vec![
            name,
            ("Type", "string", 0, "The type of the secret"),
            ("Data", "string", 0, "The number of entries in the secret"),
            age,
        ],
        "ServiceAccount" => vec![
            name,
            (
                "Secrets",
                "string",
                0,
                "Secrets is the list of secrets allowed to be used by pods running using this ServiceAccount.",
            ),
            age,
        ],
        "Endpoints" => vec![name, ("Endpoints", "string", 0, "Endpoints of the service"), age],
        "EndpointSlice" => vec![
            name,
            ("AddressType", "string", 0, "The IP protocol for this slice"),
            ("Ports", "string", 0, "The ports exposed by this slice"),
            ("Endpoints", "string", 0, "Addresses of the endpoints"),
            age,
        ],
        "Lease" => vec![name, ("Holder", "string", 0, "The holder of the lease"), age],
        "CertificateSigningRequest" => vec![
            name,
            age,
            ("SignerName", "string", 0, "Requested signer"),
            ("Requestor", "string", 0, "Name of the user who created the request"),
            ("RequestedDuration", "string", 0, "Requested duration of the issued certificate"),
            ("Condition", "string", 0, "Conditions of the request: Pending, Approved, Denied, Failed, Issued"),
        ],
        "Event" => vec![
            ("Last Seen", "string", 0, "Time since the event was last seen"),
            ("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
            ("Reason", "string", 0, "A short, machine understandable string that gives the reason for this event."),
            ("Object", "string", 0, "The object this Event is about."),
            ("Subobject", "string", 1, "The subobject this Event is about."),
            ("Source", "string", 1, "The component reporting this event."),
            ("Message", "string", 0, "A human-readable description of the status of this operation."),
            ("First Seen", "string", 1, "Time since the event was first seen"),
            ("Count", "string", 1, "The number of times this event has occurred."),
            ("Name", "string", 1, "Name of this event."),
        ],
        "StatefulSet" => {
            vec![name, ("Ready", "string", 0, "Number of the pod with ready state"), age, containers, images]
        }
        "ControllerRevision" => vec![
            name,
            ("Controller", "string", 0, "Controller of the object"),
            ("Revision", "string", 0, "Revision of the ControllerRevision"),
            age,
        ],
        "PersistentVolume" => vec![
            name,
            ("Capacity", "string", 0, "Capacity is the description of the persistent volume's resources and capacity."),
            ("Access Modes", "string", 0, "AccessModes contains all ways the volume can be mounted."),
            ("Reclaim Policy", "string", 0, "What happens to a persistent volume when released from its claim."),
            (
                "Status",
                "string",
                0,
                "Phase indicates if a volume is available, bound to a claim, or released by a claim.",
            ),
            (
                "Claim",
                "string",
                0,
                "ClaimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
            ),
            (
                "StorageClass",
                "string",
                0,
                "StorageClassName is the name of StorageClass to which this persistent volume belongs.",
            ),
            (
                "VolumeAttributesClass",
                "string",
                0,
                "VolumeAttributesClassName is the name of VolumeAttributesClass to which this persistent volume belongs.",
            ),
            ("Reason", "string", 0, "Reason is a brief CamelCase string that describes any failure."),
            age,
            (
                "VolumeMode",
                "string",
                1,
                "Define if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
            ),
        ],
        "PersistentVolumeClaim" => vec![
            name,
            ("Status", "string", 0, "Phase represents the current phase of PersistentVolumeClaim."),
            ("Volume", "string", 0, "VolumeName is the binding reference to the PersistentVolume backing this claim."),
            ("Capacity", "string", 0, "Capacity represents the actual resources of the underlying volume."),
            ("Access Modes", "string", 0, "AccessModes contains the desired access modes the volume should have."),
            ("StorageClass", "string", 0, "StorageClassName is the name of the StorageClass required by the claim."),
            (
                "VolumeAttributesClass",
                "string",
                0,
                "VolumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.",
            ),
            age,
            ("VolumeMode", "string", 1, "VolumeMode defines what type of volume is required by the claim."),
        ],
        "StorageClass" => vec![
            name,
            ("Provisioner", "string", 0, "Indicates the type of the provisioner."),
            ("ReclaimPolicy", "string", 0, "Indicates the type of the reclaim policy."),
            ("VolumeBindingMode", "string", 0, "Indicates when volume binding and dynamic provisioning should occur."),
            ("AllowVolumeExpansion", "string", 0, "Indicates whether the storage class allow volume expand"),
            age,
        ],
        _ => {
            let rest = crate::policy::columns(kind).unwrap_or_else(|| {
                vec![(
                    "Created At",
                    "date",
                    0,
                    "CreationTimestamp is a timestamp representing the server time when this object was created.",
                )]
            });
            std::iter::once(name).chain(rest).collect()
        }
    }
}

/// Upstream's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{}d", h / 24) } else { format!("{}d{}h", h / 24, h % 24) }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h % (24 * 365)) / 24;
        if d == 0 { format!("{y}y") } else { format!("{y}y{d}d") }
    } else {
        format!("{}y", h / (24 * 365))
    }
}

fn age_of(t: Option<&str>, now: i64) -> String {
    t.and_then(parse_time).map_or_else(|| "<unknown>".into(), |t| human_duration(now - t))
}

fn s<'a>(o: &'a Value, p: &str) -> &'a str {
    o.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn i(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn template_columns(o: &Value) -> (String, String, String) {
    let cs = o.pointer("/spec/template/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    let kind = s(o, "/kind");
    let sel = o
        .pointer("/spec/selector")
        .map(|sel| crate::selector::LabelSelector::of_workload(kind, sel).to_string())
        .unwrap_or_default();
    (names.join(","), images.join(","), sel)
}

fn or_unset(v: &str) -> String {
    if v.is_empty() { "<unset>".into() } else { v.into() }
}

/// Access modes as `kubectl get` abbreviates them.
fn access_modes(modes: Option<&Value>) -> String {
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "",
    };
    let list: Vec<&str> =
        modes.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(short).collect();
    list.join(",")
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn pod_status(o: &Value) -> String {
    let mut reason = s(o, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(o, "/status/phase").to_string();
    }
    for c in o.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.into();
        } else if let Some(r) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
            reason = r.into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    reason
}

fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age = json!(age_of(o.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now));
    match kind {
        "Pod" => {
            let cs = o.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs.iter().map(|c| i(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts),
                age,
                json!(or_none(s(o, "/status/podIP").into())),
                json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())),
                json!("<none>"),
            ]
        }
        "Deployment" => {
            let (c, im, sel) = template_columns(o);
            vec![
                name,
                json!(format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas"))),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                age,
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, im, sel) = template_columns(o);
            vec![
                name,
                json!(i(o, "/spec/replicas")),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                age,
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "DaemonSet" => {
            let (c, im, sel) = template_columns(o);
            let ns = o.pointer("/spec/template/spec/nodeSelector").and_then(Value::as_object).map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
            });
            vec![
                name,
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                json!(or_none(ns.unwrap_or_default())),
                age,
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "CronJob" => {
            let job = o.pointer("/spec/jobTemplate").cloned().unwrap_or_default();
            let (c, im, sel) = template_columns(&job);
            let active = o.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len);
            let last = o.pointer("/status/lastScheduleTime").and_then(Value::as_str);
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone").to_string())),
                // Upstream prints the flag as a word.
                json!(if o.pointer("/spec/suspend") == Some(&json!(true)) { "True" } else { "False" }),
                json!(active),
                json!(last.map_or_else(|| "<none>".into(), |t| age_of(Some(t), now))),
                age,
                json!(c),
                json!(im),
                json!(or_none(sel)),
            ]
        }
        "Job" => {
            let (c, im, sel) = template_columns(o);
            let conds = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else if o.pointer("/spec/suspend") == Some(&json!(true)) {
                "Suspended"
            } else {
                "Running"
            };
            let start = o.pointer("/status/startTime").and_then(Value::as_str).and_then(parse_time);
            let end = o.pointer("/status/completionTime").and_then(Value::as_str).and_then(parse_time).unwrap_or(now);
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    i(o, "/status/succeeded"),
                    o.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1)
                )),
                json!(start.map_or(String::new(), |s| human_duration(end - s))),
                age,
                json!(c),
                json!(im),
                json!(sel),
            ]
        }
        "Service" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let node = p.get("nodePort").and_then(Value::as_i64).map_or(String::new(), |n| format!(":{n}"));
                    format!("{}{node}/{}", i(p, "/port"), p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
                })
                .collect();
            let ext: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str).map(str::to_string))
                .chain(
                    o.pointer("/spec/externalIPs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string)),
                )
                .collect();
            let ty = s(o, "/spec/type");
            let ext = if !ext.is_empty() {
                ext.join(",")
            } else if ty == "LoadBalancer" {
                "<pending>".into()
            } else if ty == "ExternalName" {
                s(o, "/spec/externalName").into()
            } else {
                "<none>".into()
            };
            let sel = o.pointer("/spec/selector").and_then(Value::as_object).map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
            });
            vec![
                name,
                json!(ty),
                json!(or_none(s(o, "/spec/clusterIP").into())),
                json!(ext),
                json!(or_none(ports.join(","))),
                age,
                json!(or_none(sel.unwrap_or_default())),
            ]
        }
        "Node" => {
            let conds = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut status =
                match conds.iter().find(|c| c["type"] == "Ready").map(|c| c["status"].as_str().unwrap_or_default()) {
                    Some("True") => "Ready".to_string(),
                    _ => "NotReady".to_string(),
                };
            if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let addr = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map_or("<none>".to_string(), |a| s(a, "/address").to_string())
            };
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_none(s(o, "/status/nodeInfo/osImage").into())),
                json!(or_none(s(o, "/status/nodeInfo/kernelVersion").into())),
                json!(or_none(s(o, "/status/nodeInfo/containerRuntimeVersion").into())),
            ]
        }
        "Namespace" => vec![name, json!(s(o, "/status/phase")), age],
        "ConfigMap" => {
            let n = ["data", "binaryData"]
                .iter()
                .map(|f| o.get(*f).and_then(Value::as_object).map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![name, json!(n), age]
        }
        "Secret" => vec![
            name,
            json!(s(o, "/type")),
            json!(o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())),
            age,
        ],
        "ServiceAccount" => vec![name, json!(o.get("secrets").and_then(Value::as_array).map_or(0, Vec::len)), age],
        "Endpoints" => {
            let mut eps = Vec::new();
            for ss in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                for a in ss.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    for p in ss.get("ports").and_then(Value::as_array).into_iter().flatten() {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(or_none(shown)), age]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| i(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| e.get("addresses").and_then(Value::as_array).cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(or_none(addrs.join(","))),
                age,
            ]
        }
        "Lease" => vec![name, json!(s(o, "/spec/holderIdentity")), age],
        "CertificateSigningRequest" => vec![
            name,
            age,
            json!(s(o, "/spec/signerName")),
            json!(s(o, "/spec/username")),
            json!(o.pointer("/spec/expirationSeconds").and_then(Value::as_i64).map_or("<none>".into(), human_duration)),
            json!(crate::certificates::condition_column(o)),
        ],
        "Event" => {
            let last = o.get("lastTimestamp").and_then(Value::as_str).or(o.get("eventTime").and_then(Value::as_str));
            let first = o.get("firstTimestamp").and_then(Value::as_str).or(last);
            let obj = format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name"));
            vec![
                json!(age_of(last, now)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(obj),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(s(o, "/source/component")),
                json!(s(o, "/message")),
                json!(age_of(first, now)),
                json!(o.get("count").and_then(Value::as_i64).unwrap_or(1)),
                name,
            ]
        }
        "StatefulSet" => {
            let (c, im, _) = template_columns(o);
            let ready = format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas"));
            vec![name, json!(ready), age, json!(c), json!(im)]
        }
        "ControllerRevision" => {
            let owner = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true);
            let controller = owner.map_or("<none>".to_string(), |r| {
                let group = s(r, "/apiVersion").rsplit_once('/').map(|(g, _)| format!(".{g}")).unwrap_or_default();
                format!("{}{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
            });
            vec![name, json!(controller), json!(i(o, "/revision")), age]
        }
        "PersistentVolume" => {
            let claim = o
                .get("spec")
                .and_then(|s| s.get("claimRef"))
                .map_or(String::new(), |c| format!("{}/{}", s(c, "/namespace"), s(c, "/name")));
            let status =
                if o.pointer("/metadata/deletionTimestamp").is_some() { "Terminating" } else { s(o, "/status/phase") };
            vec![
                name,
                json!(s(o, "/spec/capacity/storage")),
                json!(access_modes(o.pointer("/spec/accessModes"))),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(status),
                json!(claim),
                json!(s(o, "/spec/storageClassName")),
                json!(or_unset(s(o, "/spec/volumeAttributesClassName"))),
                json!(s(o, "/status/reason")),
                age,
                json!(or_unset(s(o, "/spec/volumeMode"))),
            ]
        }
        "PersistentVolumeClaim" => {
            let bound = !s(o, "/spec/volumeName").is_empty();
            let status =
                if o.pointer("/metadata/deletionTimestamp").is_some() { "Terminating" } else { s(o, "/status/phase") };
            let (capacity, modes) = if bound {
                (s(o, "/status/capacity/storage").to_string(), access_modes(o.pointer("/status/accessModes")))
            } else {
                (String::new(), String::new())
            };
            vec![
                name,
                json!(status),
                json!(s(o, "/spec/volumeName")),
                json!(capacity),
                json!(modes),
                json!(s(o, "/spec/storageClassName")),
                json!(or_unset(s(o, "/spec/volumeAttributesClassName"))),
                age,
                json!(or_unset(s(o, "/spec/volumeMode"))),
            ]
        }
        "StorageClass" => {
            let default =
                o.pointer("/metadata/annotations").and_then(|a| a.get(crate::stateful::DEFAULT_CLASS_ANNOTATION))
                    == Some(&json!("true"));
            let shown = if default {
                format!("{} (default)", s(o, "/metadata/name"))
            } else {
                s(o, "/metadata/name").to_string()
            };
            vec![
                json!(shown),
                json!(s(o, "/provisioner")),
                json!(s(o, "/reclaimPolicy")),
                json!(s(o, "/volumeBindingMode")),
                json!(o.get("allowVolumeExpansion") == Some(&json!(true))),
                age,
            ]
        }
        _ => {
            let rest = crate::policy::cells(kind, o, age)
                .unwrap_or_else(|| vec![o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)]);
            std::iter::once(name).chain(rest).collect()
        }
    }
}

/// What `includeObject` asks rows to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn row(rt: &ResourceType, o: &Value, include: IncludeObject, now: i64) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    };
    let cells = match &rt.custom {
        Some(c) => custom_cells(c, o, now),
        // events.k8s.io/v1 Events print as the core Events they are stored as.
        None if crate::events::serves(rt) => cells(rt.kind, &crate::events::to_core(o.clone()), now),
        None => cells(rt.kind, o, now),
    };
    json!({"cells": cells, "object": object})
}

const CREATION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created.";

/// A CRD version's columns as upstream's table converter has them: Name,
/// then `additionalPrinterColumns`, or Age when it declares none.
fn custom_columns(c: &CustomVersion) -> Vec<(String, String, i32, String, String)> {
    let mut cols = vec![(
        "Name".to_string(),
        "string".to_string(),
        0,
        "Name must be unique within a namespace.".to_string(),
        ".metadata.name".to_string(),
    )];
    if c.columns.is_empty() {
        cols.push(("Age".into(), "date".into(), 0, CREATION.into(), ".metadata.creationTimestamp".into()));
    }
    for col in &c.columns {
        cols.push((
            col.name.clone(),
            col.type_.clone(),
            col.priority.unwrap_or(0),
            col.description.clone().unwrap_or_default(),
            col.json_path.clone(),
        ));
    }
    cols
}

fn custom_cells(c: &CustomVersion, o: &Value, now: i64) -> Vec<Value> {
    custom_columns(c)
        .into_iter()
        .map(|(_, ty, _, _, path)| {
            let found = crate::crd::column_value(&path, o).unwrap_or_default();
            match (ty.as_str(), found.as_slice()) {
                (_, []) => Value::Null,
                ("date", [v]) => age_of(v.as_str(), now).into(),
                (_, [v]) => (*v).clone(),
                (_, many) => many
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            }
        })
        .collect()
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn column_definitions(rt: &ResourceType) -> Value {
    if let Some(c) = &rt.custom {
        let cols = custom_columns(c).into_iter().map(|(name, ty, priority, description, _)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        });
        return Value::Array(cols.collect());
    }
    let cols: Vec<Value> = columns(rt.kind)
        .into_iter()
        .map(|(name, ty, priority, description)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect();
    Value::Array(cols)
}

/// A Table of `items`; `columns` false leaves out the column definitions
/// (later events of a watch).
pub fn table(rt: &ResourceType, items: &[Value], include: IncludeObject, meta: Value, with_columns: bool) -> Value {
    let now = now_secs();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
        "rows": items.iter().map(|o| row(rt, o, include, now)).collect::<Vec<_>>()});
    t["columnDefinitions"] = if with_columns { column_definitions(rt) } else { json!([]) };
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_kind;

    #[test]
    fn human_durations_like_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn pod_and_deployment_rows() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.1.0.5", "containerStatuses": [{"ready": true, "restartCount": 2},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(by_kind("Pod").unwrap(), &[pod], IncludeObject::Metadata, json!({}), true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "10.1.0.5");
        assert_eq!(t["columnDefinitions"][1]["name"], "Ready");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = table(by_kind("Deployment").unwrap(), &[d], IncludeObject::None, json!({}), false);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "2/3", 3, 2, "<unknown>", "nginx", "nginx:1", "app=web"]));
        assert_eq!(t["columnDefinitions"], json!([]));
    }

    #[test]
    fn service_node_namespace_configmap_rows() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "a"}}});
        let c = cells("Service", &svc, 0);
        assert_eq!(c[1..5], [json!("NodePort"), json!("10.96.0.5"), json!("<none>"), json!("80:30080/TCP")]);
        let node = json!({"metadata": {"name": "n", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let c = cells("Node", &node, 0);
        assert_eq!(c[1..3], [json!("Ready"), json!("control-plane")]);
        assert_eq!(
            cells("Namespace", &json!({"metadata": {"name": "x"}, "status": {"phase": "Active"}}), 0)[1],
            "Active"
        );
        assert_eq!(cells("ConfigMap", &json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}}), 0)[1], 2);
    }
}
