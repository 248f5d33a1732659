//! The service proxy (kube-proxy's iptables mode): a Service's cluster IP
//! and node ports are DNATed to its ready endpoints, one picked at random
//! per connection.
//!
//! The rules live in nat-table chains of this node's own, `PL-<id>-…`, the
//! id derived from the CNI bridge's name (two nodes sharing a host, as
//! tests do, don't collide). Each sync rewrites them whole in one
//! `iptables-restore --noflush` — never a half-applied set — and deletes
//! the chains of services that went away. Only the jumps into them from
//! PREROUTING, OUTPUT and POSTROUTING live in the built-in chains.
//!
//! Traffic that may come back the wrong way is marked and masqueraded: a
//! pod reaching itself through its service (hairpin) and anything entering
//! through a node port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{EndpointPort, Endpoints, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use sha1::Digest as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use tokio::io::AsyncWriteExt as _;

use orchestrator_apimachinery::node_fields::{self, Protocol};
use orchestrator_apimachinery::registry;
use orchestrator_client::{Api, Watch};

/// The mark of connections to masquerade (kube-proxy's bit).
const MASQ_MARK: &str = "0x4000/0x4000";

/// How often the rules are rewritten even when nothing changed (repairs a
/// flush by someone else).
const RESYNC: Duration = Duration::from_secs(30);

/// The names of one node's chains.
#[derive(Clone, Debug)]
pub struct Chains {
    id: String,
    bridge: String,
}

fn short_hash(text: &str, len: usize) -> String {
    let digest = sha1::Sha1::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect::<String>()[..len].to_string()
}

impl Chains {
    /// The chains of the node whose pods are on CNI bridge `bridge`.
    pub fn new(bridge: &str) -> Chains {
        Chains { id: short_hash(bridge, 6), bridge: bridge.to_string() }
    }

    fn prefix(&self) -> String {
        format!("PL-{}-", self.id)
    }

    /// The chain exempting pod-to-pod traffic across nodes from the CNI
    /// bridge's masquerade (the pod routes): outside `PL-<id>-`, so a
    /// proxy sync neither flushes nor deletes it.
    pub fn pod_network(&self) -> String {
        format!("PLP-{}-PODNET", self.id)
    }

    /// The chain masquerading this node's pods' traffic leaving the pod
    /// CIDR (`masquerade`): outside `PL-<id>-`, as the pod-network chain.
    pub fn pod_masquerade(&self) -> String {
        format!("PLM-{}-MASQ", self.id)
    }

    /// Cluster IPs and, last, the jump to node ports.
    pub fn services(&self) -> String {
        format!("{}SERVICES", self.prefix())
    }

    fn node_ports(&self) -> String {
        format!("{}NODEPORTS", self.prefix())
    }

    fn postrouting(&self) -> String {
        format!("{}POSTROUTING", self.prefix())
    }

    fn service(&self, port: &str) -> String {
        format!("{}S-{}", self.prefix(), short_hash(&format!("{}/{port}", self.bridge), 12))
    }

    fn endpoint(&self, port: &str, address: &str) -> String {
        format!("{}E-{}", self.prefix(), short_hash(&format!("{}/{port}/{address}", self.bridge), 12))
    }

    /// The jumps from the built-in chains: (chain, rule).
    fn jumps(&self) -> [(&'static str, Vec<String>); 3] {
        let portals = format!("plinth service portals ({})", self.bridge);
        let masquerade = format!("plinth service masquerade ({})", self.bridge);
        let rule = |comment: &str, target: String| {
            vec!["-m".into(), "comment".into(), "--comment".into(), comment.to_string(), "-j".into(), target]
        };
        [
            ("PREROUTING", rule(&portals, self.services())),
            ("OUTPUT", rule(&portals, self.services())),
            ("POSTROUTING", rule(&masquerade, self.postrouting())),
        ]
    }
}

/// One port of a Service and where it leads: typed, validated values
/// only, so nothing read from an object can add a word to a rule.
#[derive(Debug, PartialEq)]
struct Portal {
    /// `namespace/name:port` (the port's name, or its number when unnamed),
    /// all DNS labels: safe inside a quoted comment.
    key: String,
    protocol: Protocol,
    cluster_ip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    /// Ready endpoints, sorted.
    endpoints: Vec<SocketAddrV4>,
}

/// Why a Service port gets no rules (logged; the other services keep theirs).
fn check<T>(r: Result<T, String>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The addresses of `port_name`/`protocol` in these subsets: the IPv4
/// addresses of ready endpoints with a valid target port; anything else is
/// skipped with a warning naming the Endpoints.
fn ready_endpoints(ep: &Endpoints, port_name: &str, protocol: Protocol) -> BTreeSet<SocketAddrV4> {
    let mut out = BTreeSet::new();
    let who = format!(
        "Endpoints {}/{}",
        ep.metadata.namespace.as_deref().unwrap_or(""),
        ep.metadata.name.as_deref().unwrap_or("")
    );
    for subset in ep.subsets.iter().flatten() {
        let subset_ports = subset.ports.as_deref().unwrap_or_default();
        let name_of = |p: &EndpointPort| p.name.clone().unwrap_or_default();
        let Some(target) = subset_ports
            .iter()
            .find(|sp| name_of(sp) == port_name && Protocol::of(sp.protocol.as_deref()) == Ok(protocol))
            .or_else(|| subset_ports.iter().find(|sp| name_of(sp) == port_name))
        else {
            continue;
        };
        let target = match node_fields::port_number(target.port) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("service proxy: skipping {who} port {port_name:?}: port: {e}");
                continue;
            }
        };
        for a in subset.addresses.iter().flatten() {
            match node_fields::ip_address(&a.ip) {
                Ok(IpAddr::V4(ip)) => {
                    out.insert(SocketAddrV4::new(ip, target));
                }
                Ok(IpAddr::V6(_)) => {}
                Err(e) => tracing::warn!("service proxy: skipping an address of {who}: ip: {e}"),
            }
        }
    }
    out
}

/// One Service port's portal, or why it has none.
fn portal(svc: &Service, p: &ServicePort, by_name: &BTreeMap<(&str, &str), &Endpoints>) -> Result<Portal, String> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    check(node_fields::port_name(ns), "metadata.namespace")?;
    check(node_fields::port_name(name), "metadata.name")?;
    let spec = svc.spec.as_ref().ok_or("no spec")?;
    let port_name = p.name.as_deref().unwrap_or_default();
    if !port_name.is_empty() {
        check(node_fields::port_name(port_name), "port name")?;
    }
    let protocol = check(Protocol::of(p.protocol.as_deref()), "protocol")?;
    let port = check(node_fields::port_number(p.port), "port")?;
    let node_port =
        p.node_port.filter(|n| *n > 0).map(|n| check(node_fields::port_number(n), "nodePort")).transpose()?;
    let cluster_ip = match check(node_fields::ip_address(spec.cluster_ip.as_deref().unwrap_or_default()), "clusterIP")?
    {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => return Err(format!("clusterIP: {ip} is IPv6 (the proxy writes IPv4 rules)")),
    };
    let endpoints = by_name.get(&(ns, name)).map(|e| ready_endpoints(e, port_name, protocol)).unwrap_or_default();
    let label = if port_name.is_empty() { port.to_string() } else { port_name.to_string() };
    Ok(Portal {
        key: format!("{ns}/{name}:{label}"),
        protocol,
        cluster_ip,
        port,
        node_port,
        endpoints: endpoints.into_iter().collect(),
    })
}

/// The portals of the given Services, with their addresses from the
/// Endpoints of the same name. Headless and ExternalName services have
/// none; a port with a field that does not parse is skipped and logged.
fn portals(services: &[Service], endpoints: &[Endpoints]) -> Vec<Portal> {
    fn key(m: &ObjectMeta) -> (&str, &str) {
        (m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
    }
    let by_name: BTreeMap<(&str, &str), &Endpoints> = endpoints.iter().map(|e| (key(&e.metadata), e)).collect();
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if cluster_ip.is_empty() || cluster_ip == "None" || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            match portal(svc, p, &by_name) {
                Ok(portal) => out.push(portal),
                Err(e) => {
                    let (ns, name) = key(&svc.metadata);
                    tracing::warn!("service proxy: skipping Service {ns:?}/{name:?} spec.ports[{i}]: {e}");
                }
            }
        }
    }
    out
}

/// Objects of a kind as typed values; one that does not decode is logged and skipped.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(kind: &str, items: Vec<Value>) -> Vec<T> {
    items
        .into_iter()
        .filter_map(|o| {
            // Names an object that does not decode: there is no type to read them from.
            let at = format!("{}/{}", registry::namespace_of(&o).unwrap_or_default(), registry::name_of(&o));
            serde_json::from_value(o).map_err(|e| tracing::warn!("service proxy: skipping {kind} {at:?}: {e}")).ok()
        })
        .collect()
}

/// The `iptables-restore --noflush` input that makes the nat table's
/// chains of this node say exactly `portals`, deleting `existing` chains
/// of ours that are no longer wanted.
fn restore_input(chains: &Chains, portals: &[Portal], existing: &BTreeSet<String>, dns: Option<&ClusterDns>) -> String {
    let mut rules = String::new();
    let mut wanted = BTreeSet::from([chains.services(), chains.node_ports(), chains.postrouting()]);
    let mut add = |rule: String| {
        rules.push_str(&rule);
        rules.push('\n');
    };
    let (services, node_ports, post) = (chains.services(), chains.node_ports(), chains.postrouting());
    add(format!("-A {post} -m mark ! --mark {MASQ_MARK} -j RETURN"));
    add(format!("-A {post} -j MARK --xor-mark 0x4000"));
    add(format!("-A {post} -m comment --comment \"plinth service traffic requiring SNAT\" -j MASQUERADE"));
    if let Some(d) = dns {
        let (ip, local) = (orchestrator_apimachinery::cluster::CLUSTER_DNS_IP, d.local);
        // This node's pods, and the node itself (hostNetwork pods): each
        // node's pods ask their own node, even with several on one host.
        for from in [format!("-s {}", d.pod_cidr), "-m addrtype --src-type LOCAL".to_string()] {
            for proto in ["udp", "tcp"] {
                add(format!(
                    "-A {services} {from} -d {ip}/32 -p {proto} -m {proto} --dport 53 -m comment --comment \"cluster DNS (this node)\" -j DNAT --to-destination {local}"
                ));
            }
        }
    }
    for p in portals.iter().filter(|p| !p.endpoints.is_empty()) {
        let (key, proto) = (&p.key, p.protocol.lower());
        let svc = chains.service(key);
        wanted.insert(svc.clone());
        let matches = format!("-p {proto} -m {proto} --dport");
        add(format!(
            "-A {services} -d {}/32 {matches} {} -m comment --comment \"{key} cluster IP\" -j {svc}",
            p.cluster_ip, p.port
        ));
        if let Some(np) = p.node_port {
            let comment = format!("-m comment --comment \"{key} node port\"");
            add(format!("-A {node_ports} {matches} {np} {comment} -j MARK --set-xmark {MASQ_MARK}"));
            add(format!("-A {node_ports} {matches} {np} {comment} -j {svc}"));
        }
        let n = p.endpoints.len();
        for (i, address) in p.endpoints.iter().enumerate() {
            let address = address.to_string();
            let ep = chains.endpoint(key, &address);
            wanted.insert(ep.clone());
            // Each endpoint in turn takes its share of what the ones before left.
            let pick = if i + 1 < n {
                format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            add(format!("-A {svc} -m comment --comment \"{key} -> {address}\"{pick} -j {ep}"));
            add(format!("-A {ep} -s {}/32 -j MARK --set-xmark {MASQ_MARK}", p.endpoints[i].ip()));
            add(format!("-A {ep} -p {proto} -m {proto} -j DNAT --to-destination {address}"));
        }
    }
    add(format!(
        "-A {services} -m addrtype --dst-type LOCAL -m comment --comment \"plinth node ports\" -j {node_ports}"
    ));
    let stale: Vec<&String> = existing.iter().filter(|c| !wanted.contains(*c)).collect();
    restore_text(wanted.iter().chain(stale.iter().copied()), &rules, &stale)
}

/// An `iptables-restore --noflush` input for the nat table: `declared`
/// chains created or flushed (declaring does both), then `rules`, then the
/// `deleted` chains removed (flushed first, so nothing refers to them).
pub(crate) fn restore_text<'a>(declared: impl Iterator<Item = &'a String>, rules: &str, deleted: &[&String]) -> String {
    let mut out = String::from("*nat\n");
    for c in declared {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(rules);
    for c in deleted {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("run {program}: {source}")]
    Spawn { program: &'static str, source: std::io::Error },
    #[error("{program} failed: {stderr}")]
    Failed { program: &'static str, stderr: String },
    #[error(transparent)]
    Api(#[from] orchestrator_apimachinery::errors::ApiError),
}

/// Removes every jump `rule` from POSTROUTING and then the nat chain
/// `chain`, if it is there (a node's chain taken down with it).
pub(crate) async fn remove_postrouting_chain(rule: &[String], chain: &String) -> Result<(), ProxyError> {
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    while run("iptables", &[&["-w", "-t", "nat", "-D", "POSTROUTING"][..], &rule].concat(), None).await.is_ok() {}
    let saved = run("iptables-save", &["-t", "nat"], None).await?;
    if saved.lines().any(|l| l.split_whitespace().next() == Some(&format!(":{chain}"))) {
        run("iptables-restore", &["-w", "--noflush"], Some(&restore_text([chain.clone()].iter(), "", &[chain])))
            .await?;
    }
    Ok(())
}

pub(crate) async fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, ProxyError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProxyError::Spawn { program, source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(|source| ProxyError::Spawn { program, source })?;
    }
    let out = child.wait_with_output().await.map_err(|source| ProxyError::Spawn { program, source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ProxyError::Failed { program, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nat chains of ours that exist now.
async fn existing_chains(chains: &Chains) -> Result<BTreeSet<String>, ProxyError> {
    let saved = run("iptables-save", &["-t", "nat"], None).await?;
    let prefix = format!(":{}", chains.prefix());
    Ok(saved
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l[1..].split_whitespace().next().map(str::to_string))
        .collect())
}

/// Adds the jumps into our chains where they are missing (at the top, as kube-proxy does).
async fn ensure_jumps(chains: &Chains) -> Result<(), ProxyError> {
    for (builtin, rule) in chains.jumps() {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let check = [&["-w", "-t", "nat", "-C", builtin][..], &rule].concat();
        if run("iptables", &check, None).await.is_err() {
            run("iptables", &[&["-w", "-t", "nat", "-I", builtin, "1"][..], &rule].concat(), None).await?;
        }
    }
    Ok(())
}

/// The node's cluster DNS: the zone the responder answers from, and where
/// it listens (10.96.0.10:53 is DNATed there).
#[derive(Clone)]
pub struct ClusterDns {
    pub zone: Arc<RwLock<crate::dns::Zone>>,
    pub local: std::net::SocketAddrV4,
    /// The node's pod CIDR: whose queries this node answers.
    pub pod_cidr: String,
}

/// Makes the node's rules (and DNS zone) match the cluster's Services and
/// Endpoints now. Returns the input applied, which `last` skips re-applying.
async fn sync(api: &Api, chains: &Chains, dns: Option<&ClusterDns>, last: &str) -> Result<String, ProxyError> {
    let services: Vec<Service> = typed("Service", api.list("Service", "").await?);
    let endpoints: Vec<Endpoints> = typed("Endpoints", api.list("Endpoints", "").await?);
    if let Some(d) = dns {
        *d.zone.write().unwrap_or_else(|e| e.into_inner()) = crate::dns::Zone::new(&services, &endpoints);
    }
    let existing = existing_chains(chains).await?;
    let input = restore_input(chains, &portals(&services, &endpoints), &existing, dns);
    if input != last {
        run("iptables-restore", &["-w", "--noflush"], Some(&input)).await?;
        ensure_jumps(chains).await?;
    }
    Ok(input)
}

/// Keeps the node's service rules in step with the cluster, for ever:
/// after every change to a Service or Endpoints (a burst settles first),
/// and every 30 s. A failure is logged and retried.
pub async fn run_forever(api: Api, chains: Chains, dns: Option<ClusterDns>) {
    let (mut services, mut endpoints): (Option<Watch>, Option<Watch>) = (None, None);
    let mut last = String::new();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async fn next(w: &mut Option<Watch>) {
        if w.as_mut().expect("guarded").next().await.is_none() {
            *w = None;
        }
    }
    loop {
        for (w, kind) in [(&mut services, "Service"), (&mut endpoints, "Endpoints")] {
            if w.is_none() {
                *w = api.watch(kind, "").await;
            }
        }
        match sync(&api, &chains, dns.as_ref(), &last).await {
            Ok(applied) => last = applied,
            Err(e) => {
                tracing::warn!("service proxy: {e}");
                last.clear();
            }
        }
        tokio::select! {
            _ = next(&mut services), if services.is_some() => {}
            _ = next(&mut endpoints), if endpoints.is_some() => {}
            _ = tick.tick() => last.clear(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes the node's chains and the jumps into them (a node taken down, a test torn down).
pub async fn cleanup(chains: &Chains) -> Result<(), ProxyError> {
    for (builtin, rule) in chains.jumps() {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        while run("iptables", &[&["-w", "-t", "nat", "-D", builtin][..], &rule].concat(), None).await.is_ok() {}
    }
    let existing = existing_chains(chains).await?;
    if existing.is_empty() {
        return Ok(());
    }
    let input = restore_text(existing.iter(), "", &existing.iter().collect::<Vec<_>>());
    run("iptables-restore", &["-w", "--noflush"], Some(&input)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web(node_port: Option<i64>) -> Value {
        let mut port = json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"});
        if let Some(n) = node_port {
            port["nodePort"] = n.into();
        }
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"clusterIP": "10.96.0.7", "ports": [port]}})
    }

    fn web_endpoints(ips: &[&str]) -> Value {
        let addresses: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({"metadata": {"namespace": "default", "name": "web"},
               "subsets": [{"addresses": addresses, "notReadyAddresses": [{"ip": "10.1.0.9"}],
                            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]})
    }

    fn svcs(v: Vec<Value>) -> Vec<Service> {
        typed("Service", v)
    }

    fn eps(v: Vec<Value>) -> Vec<Endpoints> {
        typed("Endpoints", v)
    }

    /// Objects that reached the store without admission (an older server,
    /// a restored backup): their bad ports and addresses get no rules, the
    /// good ones keep theirs, and no field adds a line or a word to a rule.
    #[test]
    fn fields_of_a_malicious_stored_object_never_reach_the_rules() {
        let chains = Chains::new("plinth0");
        let evil = json!({"metadata": {"namespace": "default", "name": "evil"},
            "spec": {"clusterIP": "10.96.0.8", "ports": [
                {"name": "a\n-A PREROUTING -j ACCEPT", "port": 80},
                {"name": "foo", "port": 81, "protocol": "FOO"},
                {"name": "big", "port": 70000},
                {"name": "ok", "port": 82, "protocol": "UDP", "nodePort": 99999}]}});
        let bad_ip = json!({"metadata": {"namespace": "default", "name": "badip"},
            "spec": {"clusterIP": "10.96.0.9/0 -j ACCEPT\n-A X", "ports": [{"port": 80}]}});
        let quote = json!({"metadata": {"namespace": "default\" -j ACCEPT #", "name": "q"},
            "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}});
        let evil_endpoints = json!({"metadata": {"namespace": "default", "name": "web"},
            "subsets": [{"addresses": [{"ip": "10.1.0.2"}, {"ip": "10.1.0.3 -j ACCEPT\n-A X"}],
                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]});
        let services = svcs(vec![evil, bad_ip, quote, web(None)]);
        let p = portals(&services, &eps(vec![evil_endpoints]));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["default/web:http"], "only the well-formed port: {p:?}");
        assert_eq!(p[0].endpoints, ["10.1.0.2:8080".parse::<SocketAddrV4>().unwrap()]);
        let input = restore_input(&chains, &p, &BTreeSet::new(), None);
        for word in ["ACCEPT", "FOO", "-A X", "10.96.0.8", "10.96.0.9", "10.1.0.3", "70000", "99999"] {
            assert!(!input.contains(word), "{word} reached the rules:\n{input}");
        }
        for line in input.lines() {
            assert!(
                line == "*nat" || line == "COMMIT" || line.starts_with(":PL-") || line.starts_with("-A PL-"),
                "{line}"
            );
        }
    }

    #[test]
    fn portals_pair_service_ports_with_ready_endpoints() {
        let headless = json!({"metadata": {"namespace": "default", "name": "h"},
                              "spec": {"clusterIP": "None", "ports": [{"port": 1}]}});
        let got =
            portals(&svcs(vec![web(Some(30080)), headless]), &eps(vec![web_endpoints(&["10.1.0.3", "10.1.0.2"])]));
        assert_eq!(
            got,
            vec![Portal {
                key: "default/web:http".into(),
                protocol: Protocol::Tcp,
                cluster_ip: Ipv4Addr::new(10, 96, 0, 7),
                port: 80,
                node_port: Some(30080),
                endpoints: vec!["10.1.0.2:8080".parse().unwrap(), "10.1.0.3:8080".parse().unwrap()],
            }]
        );
    }

    #[test]
    fn endpoints_share_connections_evenly_and_hairpins_are_masqueraded() {
        let chains = Chains::new("plinth0");
        let p = portals(&svcs(vec![web(None)]), &eps(vec![web_endpoints(&["10.1.0.2", "10.1.0.3", "10.1.0.4"])]));
        let input = restore_input(&chains, &p, &BTreeSet::new(), None);
        let probabilities: Vec<&str> =
            input.lines().filter_map(|l| l.split("--probability ").nth(1)).map(|r| &r[..12]).collect();
        assert_eq!(probabilities, ["0.3333333333", "0.5000000000"], "{input}");
        assert_eq!(input.matches("-j DNAT --to-destination 10.1.0.").count(), 3, "{input}");
        assert!(input.contains("-s 10.1.0.2/32 -j MARK --set-xmark 0x4000/0x4000"), "{input}");
        assert!(input.contains(&format!("-A {} -d 10.96.0.7/32 -p tcp -m tcp --dport 80", chains.services())));
        assert!(!input.contains("NODEPORTS -p"), "no node port: {input}");
        assert!(input.starts_with("*nat\n") && input.ends_with("COMMIT\n"));
    }

    #[test]
    fn node_ports_mark_for_masquerade_and_lead_to_the_service() {
        let chains = Chains::new("plinth0");
        let input = restore_input(
            &chains,
            &portals(&svcs(vec![web(Some(30080))]), &eps(vec![web_endpoints(&["10.1.0.2"])])),
            &[].into(),
            None,
        );
        let node_port: Vec<&str> = input.lines().filter(|l| l.contains("--dport 30080")).collect();
        assert_eq!(node_port.len(), 2, "{input}");
        assert!(node_port[0].ends_with("-j MARK --set-xmark 0x4000/0x4000"));
        assert!(node_port[1].ends_with(&chains.service("default/web:http")));
        // One endpoint: no coin to toss.
        assert!(!input.contains("statistic"), "{input}");
    }

    #[test]
    fn a_service_without_endpoints_or_gone_leaves_no_chain_behind() {
        let chains = Chains::new("plinth0");
        let with = restore_input(
            &chains,
            &portals(&svcs(vec![web(None)]), &eps(vec![web_endpoints(&["10.1.0.2"])])),
            &[].into(),
            None,
        );
        let existing: BTreeSet<String> =
            with.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap().into()).collect();
        let without =
            restore_input(&chains, &portals(&svcs(vec![web(None)]), &eps(vec![web_endpoints(&[])])), &existing, None);
        let deleted: BTreeSet<String> =
            without.lines().filter_map(|l| l.strip_prefix("-X ")).map(String::from).collect();
        let gone = [chains.service("default/web:http"), chains.endpoint("default/web:http", "10.1.0.2:8080")];
        assert_eq!(deleted, gone.into());
        assert!(!without.contains("10.96.0.7"), "{without}");
    }

    #[test]
    fn cluster_dns_is_sent_to_this_nodes_responder() {
        let chains = Chains::new("plinth0");
        let dns = ClusterDns {
            zone: Arc::default(),
            local: "10.244.0.1:53".parse().unwrap(),
            pod_cidr: "10.244.0.0/24".into(),
        };
        let input = restore_input(&chains, &[], &BTreeSet::new(), Some(&dns));
        let rules: Vec<&str> = input.lines().filter(|l| l.contains("10.96.0.10/32")).collect();
        assert_eq!(rules.len(), 4, "{input}");
        for (i, rule) in rules.iter().enumerate() {
            let (from, proto) = (["-s 10.244.0.0/24", "--src-type LOCAL"][i / 2], ["udp", "tcp"][i % 2]);
            assert!(rule.starts_with(&format!("-A {} ", chains.services())) && rule.contains(from), "{rule}");
            assert!(rule.contains(&format!("-p {proto} -m {proto} --dport 53")), "{rule}");
            assert!(rule.ends_with("-j DNAT --to-destination 10.244.0.1:53"), "{rule}");
        }
        assert!(!restore_input(&chains, &[], &BTreeSet::new(), None).contains("10.96.0.10"));
    }

    #[test]
    fn chain_names_fit_iptables_and_differ_per_node() {
        let (a, b) = (Chains::new("plinth0"), Chains::new("plk12345x9"));
        for name in
            [a.postrouting(), a.node_ports(), a.service("ns/some-long-service-name:https"), a.endpoint("x", "y")]
        {
            assert!(name.len() <= 28, "{name}");
        }
        assert_ne!(a.services(), b.services());
        assert_ne!(a.service("default/web:http"), b.service("default/web:http"));
    }
}
