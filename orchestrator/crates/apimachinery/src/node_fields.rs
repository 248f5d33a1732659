//! Validation of the fields a node turns into iptables rules and file
//! names, as upstream validates them (`ValidateService`,
//! `ValidateEndpoints`, `validateVolumes`, `IsConfigMapKey`): Service and
//! Endpoints protocols, ports, port names and addresses; volume names,
//! projected file paths and keys. The service proxy and the kubelet use
//! the same parsers again on what they read back, so an object that
//! reached the store some other way still cannot inject a rule or write
//! outside a pod's directory.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Endpoints, KeyToPath, Service, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::validation::{Causes, LABEL_MSG, SUBDOMAIN_MSG, is_dns1123_label, is_dns1123_subdomain};

/// The Service network cluster IPs are allocated from (10.96.0.0/16).
pub const SERVICE_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// A port's protocol: the only words that reach a rule's `-p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol of a port whose `protocol` may be unset (TCP, as upstream defaults).
    pub fn of(field: Option<&str>) -> Result<Protocol, String> {
        Protocol::try_from(field.unwrap_or("TCP"))
    }

    /// The name iptables and DNS SRV records use.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl TryFrom<&str> for Protocol {
    type Error = String;
    fn try_from(s: &str) -> Result<Protocol, String> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "Unsupported value: \"{}\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                other.escape_debug()
            )),
        }
    }
}

/// A port number 1–65535 (`0` and anything else refused).
pub fn port_number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("Invalid value: {n}: must be between 1 and 65535, inclusive"))
}

/// A port name as a DNS label (Service and Endpoints ports).
pub fn port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("Invalid value: \"{}\": {LABEL_MSG}", name.escape_debug()))
    }
}

/// An IANA service name (a container port's name, a named `targetPort`), as upstream's `IsValidPortName`.
fn iana_svc_name(name: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("Invalid value: \"{}\": {why}", name.escape_debug()));
    if name.is_empty() || name.len() > 15 {
        return fail("must be no more than 15 characters");
    }
    if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        return fail("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        return fail("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        return fail("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("must not begin or end with a hyphen");
    }
    Ok(())
}

/// An address as upstream's `IsValidIP`.
pub fn ip_address(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("Invalid value: \"{}\": {IP_MSG}", s.escape_debug()))
}

/// A file path inside a volume (`items[].path`, `subPath`): relative, no
/// `..` component, not starting with `..` (upstream's
/// `validateLocalDescendingPath` and `validateLocalNonReservedPath`).
pub fn volume_path(path: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("Invalid value: \"{}\": {why}", path.escape_debug()));
    if path.starts_with('/') {
        return fail("must be a relative path");
    }
    if path.split('/').any(|c| c == "..") {
        return fail("must not contain '..'");
    }
    if path.starts_with("..") {
        return fail("must not start with '..'");
    }
    Ok(())
}

/// A ConfigMap or Secret key (`IsConfigMapKey`): also a file name in volumes.
pub fn config_key(key: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("Invalid value: \"{}\": {why}", key.escape_debug()));
    if key.is_empty() || key.len() > 253 || !key.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return fail(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        );
    }
    match key {
        "." => fail("must not be '.'"),
        ".." => fail("must not be '..'"),
        k if k.starts_with("..") => fail("must not start with '..'"),
        _ => Ok(()),
    }
}

/// What a node's validations report: the message of the first problem, or a value.
fn push<T>(causes: &mut Causes, field: String, r: Result<T, String>) -> Option<T> {
    r.map_err(|m| causes.push((field, m))).ok()
}

/// A Service's spec: type, cluster IPs (parsed, in the Service network),
/// ports (protocol, numbers, names, target ports), external IPs and name.
pub fn validate_service(o: &Value) -> Causes {
    let mut causes = Causes::new();
    let Ok(svc) = serde_json::from_value::<Service>(o.clone()) else { return causes };
    let Some(spec) = svc.spec else { return causes };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        causes.push((
            "spec.type".into(),
            format!("Unsupported value: \"{}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"", ty.escape_debug()),
        ));
    }
    if ty == "ExternalName" {
        match spec.external_name.as_deref() {
            None | Some("") => causes.push(("spec.externalName".into(), "Required value".into())),
            Some(n) if !is_dns1123_subdomain(n.trim_end_matches('.')) => causes.push((
                "spec.externalName".into(),
                format!("Invalid value: \"{}\": {SUBDOMAIN_MSG}", n.escape_debug()),
            )),
            Some(_) => {}
        }
    }
    let (net, bits) = SERVICE_NETWORK;
    let mask = u32::MAX << (32 - bits);
    let ips = spec
        .cluster_ip
        .iter()
        .map(|ip| ("spec.clusterIP".to_string(), ip))
        .chain(spec.cluster_ips.iter().flatten().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)));
    for (field, ip) in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match push(&mut causes, field.clone(), ip_address(ip)) {
            Some(IpAddr::V4(v4)) if u32::from(v4) & mask != u32::from(net) => causes.push((
                field,
                format!("Invalid value: \"{ip}\": failed to allocate IP {ip}: provided IP ({ip}) is not in the valid range. The range of valid IPs is {net}/{bits}"),
            )),
            Some(IpAddr::V6(_)) => causes.push((field, format!("Invalid value: \"{ip}\": this cluster serves IPv4 only"))),
            _ => {}
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        push(&mut causes, format!("spec.externalIPs[{i}]"), ip_address(ip));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty())
            && push(&mut causes, format!("{at}.name"), port_name(name)).is_some()
            && !names.insert(name)
        {
            causes.push((format!("{at}.name"), format!("Duplicate value: \"{name}\"")));
        }
        push(&mut causes, format!("{at}.protocol"), Protocol::of(p.protocol.as_deref()));
        push(&mut causes, format!("{at}.port"), port_number(p.port));
        match &p.target_port {
            Some(IntOrString::Int(n)) => {
                push(&mut causes, format!("{at}.targetPort"), port_number(*n));
            }
            Some(IntOrString::String(s)) => {
                push(&mut causes, format!("{at}.targetPort"), iana_svc_name(s));
            }
            None => {}
        }
        if let Some(n) = p.node_port.filter(|n| *n != 0) {
            push(&mut causes, format!("{at}.nodePort"), port_number(n));
        }
    }
    causes
}

/// An Endpoints' subsets: addresses, host names, node names, ports.
/// (Upstream also refuses loopback and link-local addresses; the API
/// server's own `kubernetes` Endpoints and host-network pods of a node on
/// loopback, as in tests, carry them here, so only the syntax is checked.)
pub fn validate_endpoints(o: &Value) -> Causes {
    let mut causes = Causes::new();
    let Ok(ep) = serde_json::from_value::<Endpoints>(o.clone()) else { return causes };
    for (i, s) in ep.subsets.iter().flatten().enumerate() {
        let lists = [("addresses", &s.addresses), ("notReadyAddresses", &s.not_ready_addresses)];
        for (list, addresses) in lists {
            for (j, a) in addresses.iter().flatten().enumerate() {
                let at = format!("subsets[{i}].{list}[{j}]");
                push(&mut causes, format!("{at}.ip"), ip_address(&a.ip));
                if let Some(h) = a.hostname.as_deref().filter(|h| !is_dns1123_label(h)) {
                    causes.push((
                        format!("{at}.hostname"),
                        format!("Invalid value: \"{}\": {LABEL_MSG}", h.escape_debug()),
                    ));
                }
                if let Some(n) = a.node_name.as_deref().filter(|n| !is_dns1123_subdomain(n)) {
                    causes.push((
                        format!("{at}.nodeName"),
                        format!("Invalid value: \"{}\": {SUBDOMAIN_MSG}", n.escape_debug()),
                    ));
                }
            }
        }
        let ports = s.ports.as_deref().unwrap_or_default();
        for (k, p) in ports.iter().enumerate() {
            let at = format!("subsets[{i}].ports[{k}]");
            match p.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => {
                    push(&mut causes, format!("{at}.name"), port_name(name));
                }
                None if ports.len() > 1 => causes.push((format!("{at}.name"), "Required value".into())),
                None => {}
            }
            push(&mut causes, format!("{at}.port"), port_number(p.port));
            push(&mut causes, format!("{at}.protocol"), Protocol::of(p.protocol.as_deref()));
        }
    }
    causes
}

fn check_items(items: &Option<Vec<KeyToPath>>, at: &str, causes: &mut Causes) {
    for (k, item) in items.iter().flatten().enumerate() {
        push(causes, format!("{at}.items[{k}].key"), config_key(&item.key));
        check_path(&item.path, &format!("{at}.items[{k}].path"), causes);
    }
}

fn check_path(path: &str, field: &str, causes: &mut Causes) {
    if path.is_empty() {
        causes.push((field.to_string(), "Required value".into()));
    } else {
        push(causes, field.to_string(), volume_path(path));
    }
}

/// The files a configMap, secret and downwardAPI source (of a volume or a
/// projection at `at`) write.
fn check_files(
    at: &str,
    config_map: Option<&Option<Vec<KeyToPath>>>,
    secret: Option<&Option<Vec<KeyToPath>>>,
    downward: Option<&Option<Vec<DownwardAPIVolumeFile>>>,
    causes: &mut Causes,
) {
    if let Some(items) = config_map {
        check_items(items, &format!("{at}.configMap"), causes);
    }
    if let Some(items) = secret {
        check_items(items, &format!("{at}.secret"), causes);
    }
    for (k, f) in downward.into_iter().flatten().flatten().enumerate() {
        check_path(&f.path, &format!("{at}.downwardAPI.items[{k}].path"), causes);
    }
}

/// A pod spec's volumes (names as DNS labels, projected files' paths and
/// keys) and its containers' `subPath`s; `at` is the spec's field path.
pub fn validate_pod_volumes(spec: &Value, at: &str) -> Causes {
    let mut causes = Causes::new();
    let volumes: Vec<Volume> =
        spec.get("volumes").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    for (i, v) in volumes.iter().enumerate() {
        let vat = format!("{at}.volumes[{i}]");
        if !is_dns1123_label(&v.name) {
            causes.push((format!("{vat}.name"), format!("Invalid value: \"{}\": {LABEL_MSG}", v.name.escape_debug())));
        }
        let (config_map, secret) = (v.config_map.as_ref().map(|c| &c.items), v.secret.as_ref().map(|s| &s.items));
        check_files(&vat, config_map, secret, v.downward_api.as_ref().map(|d| &d.items), &mut causes);
        for (j, s) in v.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
            let sat = format!("{vat}.projected.sources[{j}]");
            let (config_map, secret) = (s.config_map.as_ref().map(|c| &c.items), s.secret.as_ref().map(|s| &s.items));
            check_files(&sat, config_map, secret, s.downward_api.as_ref().map(|d| &d.items), &mut causes);
            if let Some(t) = &s.service_account_token {
                check_path(&t.path, &format!("{sat}.serviceAccountToken.path"), &mut causes);
            }
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let mounts: Vec<VolumeMount> =
                c.get("volumeMounts").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default();
            for (j, m) in mounts.iter().enumerate() {
                if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    push(&mut causes, format!("{at}.{list}[{i}].volumeMounts[{j}].subPath"), volume_path(sub));
                }
            }
        }
    }
    causes
}

/// The checks of this module that apply to an object of `kind`.
pub fn validate(kind: &str, o: &Value) -> Causes {
    match kind {
        "Service" => validate_service(o),
        "Endpoints" => validate_endpoints(o),
        "Pod" => o.get("spec").map(|s| validate_pod_volumes(s, "spec")).unwrap_or_default(),
        "Deployment" | "ReplicaSet" | "ReplicationController" | "DaemonSet" | "Job" | "StatefulSet" => {
            o.pointer("/spec/template/spec").map(|s| validate_pod_volumes(s, "spec.template.spec")).unwrap_or_default()
        }
        "ConfigMap" | "Secret" => {
            let mut causes = Causes::new();
            for field in ["data", "binaryData", "stringData"] {
                for k in o.get(field).and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
                    push(&mut causes, format!("{field}[{k}]"), config_key(k));
                }
            }
            causes
        }
        _ => Causes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(port: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.7", "ports": [port]}})
    }

    #[test]
    fn service_ports_protocols_and_addresses_are_checked_as_upstream() {
        assert!(
            validate_service(&service(json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"})))
                .is_empty()
        );
        let causes =
            validate_service(&service(json!({"name": "a\nb", "port": 80, "protocol": "FOO", "targetPort": 0})));
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.ports[0].name", "spec.ports[0].protocol", "spec.ports[0].targetPort"], "{causes:?}");
        assert_eq!(causes[1].1, "Unsupported value: \"FOO\": supported values: \"SCTP\", \"TCP\", \"UDP\"");
        assert!(causes[0].1.starts_with("Invalid value: \"a\\nb\": a lowercase RFC 1123 label"), "{}", causes[0].1);
        let bad_ip =
            json!({"metadata": {"name": "x"}, "spec": {"clusterIP": "10.96.0.7\n-A X", "ports": [{"port": 1}]}});
        assert_eq!(validate_service(&bad_ip)[0].0, "spec.clusterIP");
        let outside =
            json!({"metadata": {"name": "x"}, "spec": {"clusterIPs": ["192.168.0.1"], "ports": [{"port": 1}]}});
        assert!(validate_service(&outside)[0].1.contains("The range of valid IPs is 10.96.0.0/16"));
        let huge = service(json!({"port": 70000, "nodePort": 65536}));
        assert_eq!(validate_service(&huge).len(), 2);
    }

    #[test]
    fn endpoints_addresses_and_ports_are_checked() {
        let ok = json!({"subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 80}]}]});
        assert!(validate_endpoints(&ok).is_empty());
        let bad = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1 -j ACCEPT"}, {"ip": "10.0.0.256"}],
                                      "ports": [{"name": "x", "port": 0, "protocol": "ICMP"}, {"port": 2}]}]});
        let fields: Vec<String> = validate_endpoints(&bad).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "subsets[0].addresses[0].ip",
                "subsets[0].addresses[1].ip",
                "subsets[0].ports[0].port",
                "subsets[0].ports[0].protocol",
                "subsets[0].ports[1].name"
            ]
        );
    }

    #[test]
    fn volume_paths_and_keys_stay_inside_the_volume() {
        for bad in ["../../etc/x", "/etc/x", "a/../../b", "..x", ".."] {
            assert!(volume_path(bad).is_err(), "{bad}");
        }
        for good in ["a", "sub/two", "a..b", "x/.y"] {
            assert!(volume_path(good).is_ok(), "{good}");
        }
        for bad in [".", "..", "..data", "a/b", ""] {
            assert!(config_key(bad).is_err(), "{bad}");
        }
        let spec = json!({"volumes": [
            {"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "../../etc/x"}]}},
            {"name": "..", "emptyDir": {}},
            {"name": "p", "projected": {"sources": [{"secret": {"name": "s", "items": [{"key": "..k", "path": "/abs"}]}}]}},
        ], "containers": [{"name": "c", "volumeMounts": [{"name": "c", "mountPath": "/m", "subPath": "../x"}]}]});
        let causes = validate_pod_volumes(&spec, "spec");
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[0].configMap.items[0].path",
                "spec.volumes[1].name",
                "spec.volumes[2].projected.sources[0].secret.items[0].key",
                "spec.volumes[2].projected.sources[0].secret.items[0].path",
                "spec.containers[0].volumeMounts[0].subPath",
            ],
            "{causes:?}"
        );
        assert_eq!(causes[0].1, "Invalid value: \"../../etc/x\": must not contain '..'");
    }
}
