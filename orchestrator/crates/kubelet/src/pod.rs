//! Pure translations between a typed `Pod` (decoded once per sync) and the
//! CRI: sandbox and container configs, DNS settings, environment
//! resolution, restart decisions and the pod status computed from what the
//! runtime reports. No I/O here; `lib.rs` does the calls.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    EnvVarSource, Pod, PodCondition, PodSpec, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::cri::v1;

/// Labels the kubelet puts on sandboxes and containers (upstream's names).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks objects this kubelet manages (other clients of the runtime are left alone).
pub const LABEL_MANAGED: &str = "io.plinth.kubelet";

/// A pod's namespace, name and uid ("" where unset).
pub fn ids(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (or_empty(&m.namespace), or_empty(&m.name), or_empty(&m.uid))
}

/// The directory name of a pod's files and logs: `<ns>_<name>_<uid>`.
pub fn pod_dir_name(pod: &Pod) -> String {
    let (ns, name, uid) = ids(pod);
    format!("{ns}_{name}_{uid}")
}

fn base_labels(name: &str, namespace: &str, uid: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_NAME.to_string(), name.to_string()),
        (LABEL_POD_NAMESPACE.to_string(), namespace.to_string()),
        (LABEL_POD_UID.to_string(), uid.to_string()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
    ])
}

/// A typed pod's spec, or the empty spec (all defaults) when it has none.
fn spec_of(pod: &Pod) -> Cow<'_, PodSpec> {
    pod.spec.as_ref().map_or_else(|| Cow::Owned(PodSpec::default()), Cow::Borrowed)
}

fn sandbox_namespaces(sandbox: &v1::PodSandboxConfig) -> Option<v1::NamespaceOption> {
    sandbox.linux.as_ref()?.security_context.as_ref()?.namespace_options.clone()
}

fn or_empty(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or_default()
}

fn namespace_options(spec: &PodSpec) -> v1::NamespaceOption {
    let host = |f: Option<bool>| f.unwrap_or(false);
    let mode = |h: bool, otherwise: v1::NamespaceMode| if h { v1::NamespaceMode::Node } else { otherwise } as i32;
    let shared_pid = host(spec.share_process_namespace);
    v1::NamespaceOption {
        network: mode(host(spec.host_network), v1::NamespaceMode::Pod),
        pid: mode(host(spec.host_pid), if shared_pid { v1::NamespaceMode::Pod } else { v1::NamespaceMode::Container }),
        ipc: mode(host(spec.host_ipc), v1::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The pod's resolver settings, as upstream's `dnsPolicy` has them:
/// ClusterFirst (the default) names the cluster DNS with the namespace's
/// search path, when the node has one and the pod is not on the host's
/// network (ClusterFirstWithHostNet: even then); Default leaves the
/// node's resolv.conf (`None`: the runtime copies it); None starts empty.
/// `spec.dnsConfig` adds servers, searches and options (replacing an
/// option of the same name) to any of them; `node_resolv_conf` is read
/// only when it adds to the node's settings.
pub fn dns_config(
    pod: &Pod,
    cluster_dns: Option<std::net::Ipv4Addr>,
    node_resolv_conf: impl FnOnce() -> String,
) -> Option<v1::DnsConfig> {
    let spec = spec_of(pod);
    let host_network = spec.host_network.unwrap_or(false);
    let policy = match or_empty(&spec.dns_policy) {
        "" => "ClusterFirst",
        p => p,
    };
    let domain = orchestrator_apimachinery::cluster::CLUSTER_DOMAIN;
    let ns = or_empty(&pod.metadata.namespace);
    let mut cfg = match (policy, cluster_dns) {
        ("ClusterFirst", Some(_)) if host_network => None,
        ("ClusterFirst" | "ClusterFirstWithHostNet", Some(ip)) => Some(v1::DnsConfig {
            servers: vec![ip.to_string()],
            searches: vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()],
            options: vec!["ndots:5".into()],
        }),
        ("None", _) => Some(v1::DnsConfig::default()),
        _ => None,
    };
    if let Some(extra) = &spec.dns_config {
        let c = cfg.get_or_insert_with(|| {
            let node = orchestrator_node_net::dns::parse_resolv_conf(&node_resolv_conf());
            v1::DnsConfig { servers: node.servers, searches: node.searches, options: node.options }
        });
        for s in extra.nameservers.iter().flatten() {
            if !c.servers.contains(s) {
                c.servers.push(s.clone());
            }
        }
        for s in extra.searches.iter().flatten() {
            if !c.searches.contains(s) {
                c.searches.push(s.clone());
            }
        }
        for o in extra.options.iter().flatten() {
            let name = or_empty(&o.name);
            c.options.retain(|have| have.split(':').next() != Some(name));
            c.options.push(match o.value.as_deref() {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    cfg
}

/// The sandbox config of a pod; `attempt` counts sandboxes made for it,
/// `dns` is its resolver settings ([`dns_config`]).
pub fn sandbox_config(
    pod: &Pod,
    log_directory: &str,
    attempt: u32,
    dns: Option<v1::DnsConfig>,
) -> v1::PodSandboxConfig {
    let (meta, spec) = (&pod.metadata, spec_of(pod));
    let (name, namespace, uid) = (or_empty(&meta.name), or_empty(&meta.namespace), or_empty(&meta.uid));
    let mut labels: HashMap<String, String> = meta.labels.clone().unwrap_or_default().into_iter().collect();
    labels.extend(base_labels(name, namespace, uid));
    // A pod on the host's network shares the node's UTS namespace too
    // (containerd), and runc refuses to set a hostname there ("unable to
    // set hostname without a private UTS namespace"): as upstream's
    // kubelet, such a pod's sandbox names no hostname (it has the node's).
    let hostname = match or_empty(&spec.hostname) {
        _ if spec.host_network == Some(true) => "",
        "" => name,
        h => h,
    };
    let mut port_mappings = Vec::new();
    for p in spec.containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        let Some(host_port) = p.host_port.filter(|p| *p > 0) else { continue };
        let protocol = match p.protocol.as_deref() {
            Some("UDP") => v1::Protocol::Udp,
            Some("SCTP") => v1::Protocol::Sctp,
            _ => v1::Protocol::Tcp,
        };
        port_mappings.push(v1::PortMapping {
            protocol: protocol as i32,
            container_port: p.container_port,
            host_port,
            host_ip: or_empty(&p.host_ip).to_string(),
        });
    }
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt,
        }),
        hostname: hostname.to_string(),
        log_directory: log_directory.to_string(),
        dns_config: dns,
        port_mappings,
        labels,
        annotations: meta.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(v1::LinuxPodSandboxConfig {
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                privileged: has_privileged_container(&spec),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether a container of the pod (init and ephemeral ones included) is
/// privileged: its sandbox must be too, as upstream's kubelet makes it
/// (containerd refuses a privileged container in an unprivileged sandbox:
/// "no privileged container allowed in sandbox").
fn has_privileged_container(spec: &PodSpec) -> bool {
    let privileged = |s: Option<&SecurityContext>| s.and_then(|s| s.privileged) == Some(true);
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| privileged(c.security_context.as_ref()))
        || spec.ephemeral_containers.iter().flatten().any(|c| privileged(c.security_context.as_ref()))
}

/// Objects the environment and volumes refer to, fetched by the caller.
pub trait Lookup {
    /// A ConfigMap's or Secret's data, decoded (Secrets are base64 in the API).
    fn data(&self, kind: &str, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The pod's ServiceAccount token for `audience` ("" for the API server) and lifetime.
    fn token(&self, _audience: &str, _seconds: i64) -> Option<String> {
        None
    }
    /// The `kubernetes` Service's cluster IP and HTTPS port (for `KUBERNETES_SERVICE_HOST`).
    fn api_service(&self) -> Option<(String, i32)> {
        None
    }
}

/// `data` (and `binaryData`) of a ConfigMap, `data` of a Secret, decoded.
pub fn object_data(kind: &str, o: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(d) = o.get("data").and_then(Value::as_object) {
        for (k, v) in d {
            let s = v.as_str().unwrap_or_default();
            let bytes = if kind == "Secret" { b64.decode(s).unwrap_or_default() } else { s.as_bytes().to_vec() };
            out.insert(k.clone(), bytes);
        }
    }
    if kind == "ConfigMap"
        && let Some(d) = o.get("binaryData").and_then(Value::as_object)
    {
        for (k, v) in d {
            out.insert(k.clone(), b64.decode(v.as_str().unwrap_or_default()).unwrap_or_default());
        }
    }
    if kind == "Secret"
        && let Some(d) = o.get("stringData").and_then(Value::as_object)
    {
        for (k, v) in d {
            out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
    }
    out
}

/// A container that cannot be created from its spec (upstream's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The value of a `fieldRef` (downward API), as upstream supports them.
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, ConfigError> {
    let (meta, spec, status) = (&pod.metadata, spec_of(pod), pod.status.as_ref());
    let bracket =
        |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_prefix("['")).and_then(|r| r.strip_suffix("']"));
    let one = |m: &Option<BTreeMap<String, String>>, k: &str| m.as_ref().and_then(|m| m.get(k)).cloned();
    // `key="value"` lines, sorted by key, the value quoted as JSON (as upstream).
    let all = |m: &Option<BTreeMap<String, String>>| {
        let lines: Vec<String> = m.iter().flatten().map(|(k, v)| format!("{k}={}", Value::String(v.clone()))).collect();
        Some(lines.join("\n"))
    };
    let value = if let Some(k) = bracket("metadata.labels") {
        one(&meta.labels, k)
    } else if let Some(k) = bracket("metadata.annotations") {
        one(&meta.annotations, k)
    } else {
        match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone(),
            "metadata.uid" => meta.uid.clone(),
            "spec.nodeName" => spec.node_name.clone(),
            "spec.serviceAccountName" => spec.service_account_name.clone(),
            "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
            "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
            "metadata.labels" => all(&meta.labels),
            "metadata.annotations" => all(&meta.annotations),
            _ => return Err(ConfigError(format!("unsupported fieldRef fieldPath {path:?}"))),
        }
    };
    Ok(value.unwrap_or_default())
}

/// A container's request (`limits` false) or limit of `resource` as
/// written, "" when it has none.
fn quantity<'a>(container: &'a Container, limits: bool, resource: &str) -> &'a str {
    let r = container.resources.as_ref();
    let list = r.and_then(|r| if limits { r.limits.as_ref() } else { r.requests.as_ref() });
    list.and_then(|l| l.get(resource)).map_or("", |q| q.0.as_str())
}

/// The value of a `resourceFieldRef` (limits/requests of a container), in the divisor's units (default 1).
fn resource_ref(container: &Container, resource: &str) -> Result<String, ConfigError> {
    let q = match resource.split_once('.') {
        Some(("limits", r)) => quantity(container, true, r),
        Some(("requests", r)) => quantity(container, false, r),
        _ => "",
    };
    if resource.ends_with("cpu") {
        // Whole cores, rounded up, as upstream's default divisor of 1.
        let m = if q.is_empty() { 0 } else { parse_cpu_millis(q)? };
        return Ok(m.div_ceil(1000).max(if q.is_empty() { 0 } else { 1 }).to_string());
    }
    if q.is_empty() { Ok("0".into()) } else { parse_bytes(q).map(|b| b.to_string()) }
}

fn env_source(
    pod: &Pod,
    container: &Container,
    source: &EnvVarSource,
    lookup: &dyn Lookup,
) -> Result<Option<String>, ConfigError> {
    let ns = or_empty(&pod.metadata.namespace);
    let keys = [
        source.config_map_key_ref.as_ref().map(|r| ("ConfigMap", &r.name, &r.key, r.optional)),
        source.secret_key_ref.as_ref().map(|r| ("Secret", &r.name, &r.key, r.optional)),
    ];
    if let Some((kind, name, key, optional)) = keys.into_iter().flatten().next() {
        let value = lookup.data(kind, ns, name).map(|d| d.get(key).cloned());
        return match value {
            Some(Some(v)) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            _ if optional.unwrap_or(false) => Ok(None),
            None => Err(ConfigError(format!("{} {name:?} not found", kind.to_lowercase()))),
            Some(None) => Err(ConfigError(format!("couldn't find key {key} in {kind} {ns}/{name}"))),
        };
    }
    if let Some(r) = &source.field_ref {
        return field_ref(pod, &r.field_path).map(Some);
    }
    if let Some(r) = &source.resource_field_ref {
        return resource_ref(container, &r.resource).map(Some);
    }
    Ok(None)
}

/// Expands `$(VAR)` references to earlier variables, as upstream (`$$` escapes).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment: `envFrom` first, then `env` (later wins), with `$(VAR)` expansion.
pub fn environment(
    pod: &Pod,
    container: &Container,
    lookup: &dyn Lookup,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = or_empty(&pod.metadata.namespace);
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    // The API server's Service, as upstream's kubelet gives every pod.
    if let Some((ip, port)) = lookup.api_service() {
        let addr = format!("tcp://{ip}:{port}");
        for (k, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.clone()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
            ("KUBERNETES_PORT", addr.clone()),
            (&format!("KUBERNETES_PORT_{port}_TCP"), addr),
            (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
            (&format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
            (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.clone()),
        ] {
            set(&mut env, k.to_string(), v);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = or_empty(&from.prefix);
        let sources = [
            from.config_map_ref.as_ref().map(|r| ("ConfigMap", &r.name, r.optional)),
            from.secret_ref.as_ref().map(|r| ("Secret", &r.name, r.optional)),
        ];
        for (kind, name, optional) in sources.into_iter().flatten() {
            match lookup.data(kind, ns, name) {
                Some(d) => {
                    for (k, v) in d {
                        set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                    }
                }
                None if optional.unwrap_or(false) => {}
                None => return Err(ConfigError(format!("{} {name:?} not found", kind.to_lowercase()))),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            Some(src) => match env_source(pod, container, src, lookup)? {
                Some(v) => v,
                None => continue,
            },
            None => expand(or_empty(&e.value), &env),
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// CPU quantity in millicores ("500m", "2", "0.5").
pub fn parse_cpu_millis(q: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError(format!("invalid CPU quantity {q:?}"));
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().map_err(|_| bad());
    }
    let f: f64 = q.parse().map_err(|_| bad())?;
    Ok((f * 1000.0).ceil() as u64)
}

/// A byte quantity ("64Mi", "1G", "128974848", "129e6").
pub fn parse_bytes(q: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError(format!("invalid memory quantity {q:?}"));
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            let f: f64 = n.parse().map_err(|_| bad())?;
            return Ok((f * mult).ceil() as u64);
        }
    }
    if let Some(m) = q.strip_suffix('m') {
        let f: f64 = m.parse().map_err(|_| bad())?;
        return Ok((f / 1000.0).ceil() as u64);
    }
    let f: f64 = q.parse().map_err(|_| bad())?;
    Ok(f.ceil() as u64)
}

/// Requests and limits as cgroup settings (cgroupfs: shares, CFS quota, memory limit).
pub fn linux_resources(container: &Container) -> Result<v1::LinuxContainerResources, ConfigError> {
    let get = |limits: bool, r: &str| Some(quantity(container, limits, r)).filter(|s| !s.is_empty());
    let limit_cpu = get(true, "cpu").map(parse_cpu_millis).transpose()?;
    let req_cpu = get(false, "cpu").map(parse_cpu_millis).transpose()?.or(limit_cpu);
    let limit_mem = get(true, "memory").map(parse_bytes).transpose()?;
    // Upstream: shares = millis * 1024 / 1000, at least 2.
    let shares = req_cpu.map_or(2, |m| (m * 1024 / 1000).max(2)) as i64;
    let period = 100_000i64;
    Ok(v1::LinuxContainerResources {
        cpu_shares: shares,
        cpu_period: if limit_cpu.is_some() { period } else { 0 },
        cpu_quota: limit_cpu.map_or(0, |m| (m as i64 * period / 1000).max(1000)),
        memory_limit_in_bytes: limit_mem.map_or(0, |b| b as i64),
        ..Default::default()
    })
}

/// The pod's QoS class, as upstream computes it.
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = spec_of(pod);
    let (mut any, mut guaranteed) = (false, true);
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for r in ["cpu", "memory"] {
            let (req, lim) = (quantity(c, false, r), quantity(c, true, r));
            any |= !req.is_empty() || !lim.is_empty();
            guaranteed &= !lim.is_empty() && (req.is_empty() || req == lim);
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `namespaces` are the sandbox's: a container joins its pod's namespaces.
fn security_context(
    pod: &Pod,
    container: &Container,
    namespaces: Option<v1::NamespaceOption>,
) -> v1::LinuxContainerSecurityContext {
    let spec = spec_of(pod);
    let (own, of_pod) = (container.security_context.clone().unwrap_or_default(), spec.security_context.as_ref());
    // The container's setting, else the pod's.
    let int = |own: Option<i64>, of_pod: Option<i64>| own.or(of_pod).map(|value| v1::Int64Value { value });
    let caps = own.capabilities.unwrap_or_default();
    let (add, drop) = (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default());
    let cap_names = |v: &[String]| v.iter().map(|c| format!("CAP_{}", c.trim_start_matches("CAP_"))).collect();
    v1::LinuxContainerSecurityContext {
        privileged: own.privileged.unwrap_or(false),
        run_as_user: int(own.run_as_user, of_pod.and_then(|s| s.run_as_user)),
        run_as_group: int(own.run_as_group, of_pod.and_then(|s| s.run_as_group)),
        readonly_rootfs: own.read_only_root_filesystem.unwrap_or(false),
        capabilities: (!add.is_empty() || !drop.is_empty()).then(|| v1::Capability {
            add_capabilities: cap_names(&add),
            drop_capabilities: cap_names(&drop),
            ..Default::default()
        }),
        supplemental_groups: of_pod.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default(),
        namespace_options: namespaces,
        ..Default::default()
    }
}

/// The config of one container attempt. `image` is the resolved image reference.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    sandbox: &v1::PodSandboxConfig,
    image: &str,
    attempt: u32,
    env: &[(String, String)],
    mounts: Vec<v1::Mount>,
) -> Result<v1::ContainerConfig, ConfigError> {
    let (name, meta) = (container.name.as_str(), &pod.metadata);
    let mut labels = base_labels(or_empty(&meta.name), or_empty(&meta.namespace), or_empty(&meta.uid));
    labels.insert(LABEL_CONTAINER_NAME.into(), name.to_string());
    let annotations = HashMap::from([
        ("io.kubernetes.container.restartCount".to_string(), attempt.to_string()),
        ("io.kubernetes.pod.terminationGracePeriod".to_string(), grace_period(pod, None).to_string()),
    ]);
    let exp = |v: &Option<Vec<String>>| v.iter().flatten().map(|s| expand(s, env)).collect();
    Ok(v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: name.to_string(), attempt }),
        image: Some(v1::ImageSpec { image: image.to_string(), ..Default::default() }),
        command: exp(&container.command),
        args: exp(&container.args),
        working_dir: or_empty(&container.working_dir).to_string(),
        envs: env.iter().map(|(key, value)| v1::KeyValue { key: key.clone(), value: value.clone() }).collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{name}/{attempt}.log"),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(linux_resources(container)?),
            security_context: Some(security_context(pod, container, sandbox_namespaces(sandbox))),
        }),
        ..Default::default()
    })
}

/// The grace period of a pod's termination: the deletion's, else the spec's, else 30 s.
pub fn grace_period(pod: &Pod, deleting: Option<()>) -> i64 {
    let spec = spec_of(pod).termination_grace_period_seconds.unwrap_or(30);
    match deleting {
        Some(()) => pod.metadata.deletion_grace_period_seconds.unwrap_or(spec),
        None => spec,
    }
}

/// `imagePullPolicy`, defaulted as upstream (Always for `:latest` or no tag).
pub fn pull_policy(container: &Container) -> &str {
    match or_empty(&container.image_pull_policy) {
        "" => {
            let image = or_empty(&container.image);
            let last = image.rsplit('/').next().unwrap_or(image);
            if image.contains('@') || last.contains(':') && !last.ends_with(":latest") {
                "IfNotPresent"
            } else {
                "Always"
            }
        }
        p => p,
    }
}

/// Back-off before restarting a container that exited `restarts` times: 10 s doubling to 5 min.
pub fn backoff_seconds(restarts: u32) -> u64 {
    (10u64 << restarts.min(5).saturating_sub(1).min(5)).min(300)
}

/// Back-off after `failures` failed sandbox creations in a row: 1 s
/// doubling to 5 min (the first failures are often the runtime still
/// loading its CNI config).
pub fn sandbox_backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs((1u64 << failures.clamp(1, 10).saturating_sub(1)).min(300))
}

/// Whether a container that exited with `exit_code` is started again under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// What the runtime says about one container attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    pub attempt: u32,
    pub state: v1::ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
}

impl Observed {
    pub fn from_status(s: &v1::ContainerStatus) -> Observed {
        Observed {
            id: s.id.clone(),
            attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
            state: v1::ContainerState::try_from(s.state).unwrap_or(v1::ContainerState::ContainerUnknown),
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            image: s.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
            image_ref: s.image_ref.clone(),
        }
    }
}

/// A CRI time (nanoseconds since the epoch) as an API time.
fn time_of_nanos(ns: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(ns)).ok().map(Time)
}

fn waiting_state(reason: &str, message: Option<&str>) -> ContainerState {
    let waiting = ContainerStateWaiting { reason: Some(reason.to_string()), message: message.map(str::to_string) };
    ContainerState { waiting: Some(waiting), ..Default::default() }
}

fn state_of(o: &Observed) -> ContainerState {
    match o.state {
        v1::ContainerState::ContainerRunning => ContainerState {
            running: Some(ContainerStateRunning { started_at: time_of_nanos(o.started_at) }),
            ..Default::default()
        },
        v1::ContainerState::ContainerExited => {
            let reason = match o.reason.as_str() {
                "" if o.exit_code == 0 => "Completed",
                "" => "Error",
                r => r,
            };
            let t = ContainerStateTerminated {
                exit_code: o.exit_code,
                reason: Some(reason.to_string()),
                started_at: time_of_nanos(o.started_at),
                finished_at: time_of_nanos(o.finished_at),
                container_id: Some(format!("containerd://{}", o.id)),
                message: Some(o.message.clone()).filter(|m| !m.is_empty()),
                ..Default::default()
            };
            ContainerState { terminated: Some(t), ..Default::default() }
        }
        _ => waiting_state("ContainerCreating", None),
    }
}

/// The state of a container that waits for its init containers.
pub fn pod_initializing() -> ContainerState {
    waiting_state("PodInitializing", None)
}

/// Why a container is not running, when the kubelet knows (pull errors, back-off, config errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// The status of one container: its newest attempt, the one before, and the kubelet's waiting reason.
pub fn container_status(
    spec: &Container,
    latest: Option<&Observed>,
    previous: Option<&Observed>,
    waiting: Option<&Waiting>,
    ready: bool,
    started: bool,
) -> ContainerStatus {
    let mut last_state = previous.map_or_else(ContainerState::default, state_of);
    let state = match (waiting, latest) {
        (Some(w), _) => {
            // A container waiting for its restart shows the last run as lastState.
            if let Some(o) = latest.filter(|o| o.state == v1::ContainerState::ContainerExited) {
                last_state = state_of(o);
            }
            waiting_state(&w.reason, Some(&w.message))
        }
        (None, Some(o)) => state_of(o),
        (None, None) => waiting_state("ContainerCreating", None),
    };
    ContainerStatus {
        name: spec.name.clone(),
        image: or_empty(&spec.image).to_string(),
        image_id: latest.map(|o| o.image_ref.clone()).unwrap_or_default(),
        restart_count: latest.map_or(0, |o| o.attempt as i32),
        ready,
        started: Some(started),
        last_state: Some(last_state),
        container_id: latest.map(|o| format!("containerd://{}", o.id)),
        state: Some(state),
        ..Default::default()
    }
}

/// The exit code of a container status that shows a finished run.
pub fn exit_code(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

/// The pod phase from its containers' statuses (upstream's `getPhase`).
pub fn phase(pod: &Pod, statuses: &[ContainerStatus], init_done: bool) -> &'static str {
    if !init_done {
        return "Pending";
    }
    let spec = spec_of(pod);
    let policy = or_empty(&spec.restart_policy);
    let (mut running, mut waiting, mut succeeded, mut failed, mut unknown) = (0, 0, 0, 0, 0);
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        let last_terminated = s.last_state.as_ref().is_some_and(|l| l.terminated.is_some());
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = state.terminated {
            if t.exit_code == 0 { succeeded += 1 } else { failed += 1 }
        } else if state.waiting.is_some() {
            if last_terminated { running += 1 } else { waiting += 1 }
        } else {
            unknown += 1;
        }
    }
    let total = statuses.len();
    if unknown > 0 || total == 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if succeeded + failed == total {
        return match policy {
            "Always" | "" => "Running",
            "OnFailure" if failed > 0 => "Running",
            _ if failed > 0 => "Failed",
            _ => "Succeeded",
        };
    }
    "Pending"
}

/// Keeps a condition's lastTransitionTime (from the pod as it was) while its status stays the same.
pub fn condition(old: &Pod, kind: &str, ok: bool, reason: Option<&str>, now: &Time) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let conditions = old.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let since = match conditions.iter().find(|c| c.type_ == kind) {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        last_transition_time: since,
        reason: reason.filter(|_| !ok).map(str::to_string),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Objects(Vec<(String, String, Value)>);

    impl Lookup for Objects {
        fn data(&self, kind: &str, _ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.0.iter().find(|(k, n, _)| k == kind && n == name).map(|(k, _, o)| object_data(k, o))
        }
    }

    fn typed<K: serde::de::DeserializeOwned>(o: Value) -> K {
        serde_json::from_value(o).unwrap()
    }

    fn pod() -> Pod {
        typed(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1", "ports": [{"containerPort": 80, "hostPort": 8080}]}]},
            "status": {"podIP": "10.0.0.5"}
        }))
    }

    #[test]
    fn environment_resolves_sources_in_order() {
        let objects = Objects(vec![
            ("ConfigMap".into(), "cm".into(), json!({"data": {"A": "from-cm", "B": "b"}})),
            ("Secret".into(), "s".into(), json!({"data": {"pw": "aHVudGVyMg=="}})),
        ]);
        let c = typed(json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "X", "value": "x"},
                {"name": "Y", "value": "$(X)-y $$(X) $(NOPE)"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            ]
        }));
        let env = environment(&pod(), &c, &objects).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_A"), Some("from-cm"));
        assert_eq!(get("Y"), Some("x-y $(X) $(NOPE)"));
        assert_eq!(get("PW"), Some("hunter2"));
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("IP"), Some("10.0.0.5"));
        assert_eq!(get("OPT"), None);
        let missing = typed(
            json!({"name": "c", "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz"}}}]}),
        );
        assert_eq!(
            environment(&pod(), &missing, &objects).unwrap_err().0,
            "couldn't find key zz in ConfigMap default/cm"
        );
    }

    #[test]
    fn quantities_and_resources() {
        assert_eq!(parse_cpu_millis("250m").unwrap(), 250);
        assert_eq!(parse_cpu_millis("1.5").unwrap(), 1500);
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("129e6").unwrap(), 129_000_000);
        assert!(parse_bytes("lots").is_err());
        let c = typed(json!({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "32Mi"}}}));
        let r = linux_resources(&c).unwrap();
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes),
            (256, 50_000, 100_000, 32 << 20)
        );
        let r = linux_resources(&typed(json!({}))).unwrap();
        assert_eq!((r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes), (2, 0, 0));
        assert_eq!(qos_class(&pod()), "BestEffort");
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&typed(g)), "Guaranteed");
        let b = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&typed(b)), "Burstable");
    }

    #[test]
    fn dns_follows_the_pod_dns_policy() {
        let dns = Some(std::net::Ipv4Addr::new(10, 96, 0, 10));
        let node = || "nameserver 192.0.2.53\nsearch lan\noptions edns0\n".to_string();
        let pod = |spec: Value| -> Pod { typed(json!({"metadata": {"namespace": "shop"}, "spec": spec})) };
        let c = dns_config(&pod(json!({})), dns, node).unwrap();
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(c.searches, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(c.options, ["ndots:5"]);
        assert_eq!(dns_config(&pod(json!({})), None, node), None, "no cluster DNS: the node's");
        assert_eq!(dns_config(&pod(json!({"hostNetwork": true})), dns, node), None);
        let host_net = json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"});
        assert_eq!(dns_config(&pod(host_net), dns, node).unwrap().servers, ["10.96.0.10"]);
        assert_eq!(dns_config(&pod(json!({"dnsPolicy": "Default"})), dns, node), None);
        let custom = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.example"],
                            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}});
        let c = dns_config(&pod(custom), dns, node).unwrap();
        assert_eq!(
            (c.servers, c.searches, c.options),
            (
                vec!["1.1.1.1".to_string()],
                vec!["a.example".to_string()],
                vec!["ndots:2".to_string(), "edns0".to_string()]
            )
        );
        let added = json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}});
        assert_eq!(dns_config(&pod(added), dns, node).unwrap().options, ["ndots:1"], "replaces ndots:5");
        let on_node = json!({"dnsPolicy": "Default", "dnsConfig": {"searches": ["b.example"]}});
        assert_eq!(dns_config(&pod(on_node), dns, node).unwrap().searches, ["lan", "b.example"]);
    }

    #[test]
    fn a_privileged_container_of_any_kind_makes_the_sandbox_privileged() {
        let privileged = |p: &Pod| {
            let s = sandbox_config(p, "/var/log/pods/x", 1, None);
            s.linux.unwrap().security_context.unwrap().privileged
        };
        assert!(!privileged(&pod()));
        for field in ["containers", "initContainers", "ephemeralContainers"] {
            let mut v = serde_json::to_value(pod()).unwrap();
            v["spec"][field] = json!([{"name": "p", "image": "busybox:1", "securityContext": {"privileged": true}}]);
            if field != "containers" {
                v["spec"]["containers"][0]["securityContext"] = json!({"privileged": false});
            }
            assert!(privileged(&typed(v)), "{field}");
        }
    }

    #[test]
    fn sandbox_and_container_configs() {
        let p = pod();
        let s = sandbox_config(&p, "/var/log/pods/x", 1, None);
        assert_eq!(s.metadata.as_ref().unwrap().uid, "u-1");
        assert_eq!(s.labels[LABEL_POD_UID], "u-1");
        assert_eq!(s.labels["app"], "web");
        assert_eq!(s.port_mappings[0].host_port, 8080);
        let ns = sandbox_namespaces(&s).unwrap();
        assert_eq!(ns.network, v1::NamespaceMode::Pod as i32);
        assert_eq!(s.hostname, or_empty(&p.metadata.name), "a pod's own hostname is its name");
        let mut on_host = p.clone();
        on_host.spec.as_mut().unwrap().host_network = Some(true);
        on_host.spec.as_mut().unwrap().hostname = Some("h".into());
        let s_host = sandbox_config(&on_host, "/var/log/pods/x", 1, None);
        assert_eq!(sandbox_namespaces(&s_host).unwrap().network, v1::NamespaceMode::Node as i32);
        assert_eq!(s_host.hostname, "", "on the host's network: the node's hostname, none set");
        let c = typed(json!({"name": "c", "command": ["sh", "-c"], "args": ["echo $(A)"], "workingDir": "/w",
                       "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}}}));
        let cfg = container_config(&p, &c, &s, "sha256:abc", 2, &[("A".into(), "1".into())], vec![]).unwrap();
        assert_eq!(cfg.args, vec!["echo 1"]);
        assert_eq!(cfg.log_path, "c/2.log");
        assert_eq!(cfg.labels[LABEL_CONTAINER_NAME], "c");
        let sc = cfg.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert_eq!(sc.capabilities.unwrap().add_capabilities, vec!["CAP_NET_ADMIN"]);
        assert_eq!(sc.namespace_options, Some(ns), "the container joins the sandbox's namespaces");
    }

    #[test]
    fn policies() {
        let policy = |c: Value| pull_policy(&typed(c)).to_string();
        assert_eq!(policy(json!({"image": "busybox"})), "Always");
        assert_eq!(policy(json!({"image": "busybox:latest"})), "Always");
        assert_eq!(policy(json!({"image": "localhost:5000/busybox"})), "Always");
        assert_eq!(policy(json!({"image": "busybox:1.36"})), "IfNotPresent");
        assert_eq!(policy(json!({"image": "b:1", "imagePullPolicy": "Never"})), "Never");
        assert_eq!([1, 2, 3, 6, 9].map(backoff_seconds), [10, 20, 40, 160, 160].map(|s: u64| s.min(300)));
        let secs = |n: u32| sandbox_backoff(n).as_secs();
        assert_eq!([0, 1, 2, 3, 8, 9, 10, 40].map(secs), [1, 1, 2, 4, 128, 256, 300, 300]);
        assert!(!should_restart("Never", 1) && should_restart("OnFailure", 1) && !should_restart("OnFailure", 0));
        assert!(should_restart("Always", 0));
    }

    #[test]
    fn phases() {
        let status = |s: Value| -> ContainerStatus { typed(s) };
        let running = status(json!({"state": {"running": {}}}));
        let done = status(json!({"state": {"terminated": {"exitCode": 0}}}));
        let failed = status(json!({"state": {"terminated": {"exitCode": 1}}}));
        let crash = status(
            json!({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}),
        );
        let creating = status(json!({"state": {"waiting": {"reason": "ContainerCreating"}}}));
        let p = |policy: &str| -> Pod { typed(json!({"spec": {"restartPolicy": policy}})) };
        assert_eq!(phase(&p("Always"), std::slice::from_ref(&running), true), "Running");
        assert_eq!(phase(&p("Always"), &[crash], true), "Running");
        assert_eq!(phase(&p("Always"), &[creating], true), "Pending");
        assert_eq!(phase(&p("Never"), std::slice::from_ref(&done), true), "Succeeded");
        assert_eq!(phase(&p("Never"), &[done, failed], true), "Failed");
        assert_eq!(phase(&p("Never"), &[running], false), "Pending");
    }
}
