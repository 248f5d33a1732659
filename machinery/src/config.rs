//! The machine config: one TOML document per node, signed by the operator.
//!
//! [`MachineConfig::parse`] is the only way from untrusted text to a config:
//! it reports **every** problem it finds at once, each with file, line,
//! column, field path and, where one helps, a hint. Syntax errors come first
//! (the parser recovers and keeps going); then each section is decoded on
//! its own, so an unknown key in `[machine]` does not hide a wrong type in
//! `[cluster]`; then the semantic checks run over whatever decoded.
//!
//! Defaults (what an omitted key means) are on each field below and in
//! `docs/machine-config.md`.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use serde::de::{DeserializeOwned, IntoDeserializer as _};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The `kind` every machine config carries.
pub const KIND: &str = "MachineConfig";
/// Port apid listens on unless `api.port` says otherwise.
pub const DEFAULT_API_PORT: u16 = 50000;
/// Port of the Kubernetes API server on control-plane nodes.
pub const KUBE_API_PORT: u16 = 6443;
/// Services a config may enable; `apid` is always on. containerd and the
/// orchestrator join this list when init learns to run them.
pub const SERVICE_CATALOGUE: &[&str] = &["apid"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// The Plinth release (`MAJOR.MINOR`) the config was written for
    /// (`osctl gen config` writes its own). A node reads keys it does not
    /// know as warnings, not errors, in a config written for the next minor
    /// release of its own: a node rolled back reads what the newer slot's
    /// tools wrote. Default: none (every unknown key is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plinth: Option<String>,
    /// Monotonically increasing: a node refuses a config whose version is
    /// not greater than the one it has.
    pub version: u64,
    /// Always `"MachineConfig"`.
    #[serde(default = "default_kind")]
    pub kind: String,
    pub machine: Machine,
    pub cluster: Cluster,
    pub api: Api,
    #[serde(default)]
    pub services: Services,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// RFC 1123 host name.
    pub hostname: String,
    /// NTP servers (host names or addresses, SNTP on port 123). Default:
    /// [`DEFAULT_NTP`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
    #[serde(default)]
    pub network: Network,
}

/// The NTP servers a node asks when its config names none.
pub const DEFAULT_NTP: &[&str] = &["pool.ntp.org"];

impl Machine {
    /// The NTP servers to ask: the config's, else [`DEFAULT_NTP`].
    pub fn ntp_servers(&self) -> Vec<String> {
        if self.ntp.is_empty() { DEFAULT_NTP.iter().map(|s| s.to_string()).collect() } else { self.ntp.clone() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Default: none, which means DHCP on every interface that has a link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS servers (IP addresses). Default: those DHCP offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    /// Default: false.
    #[serde(default)]
    pub dhcp: bool,
    /// Static addresses in CIDR form, e.g. `10.0.0.5/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Default: what the driver sets (1500 on Ethernet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination in CIDR form; `0.0.0.0/0` for the default route.
    pub to: String,
    /// Gateway IP address.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controlplane,
    Worker,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    #[default]
    Sqlite,
    Etcd,
}

/// How a node reaches the other nodes' pods (`cluster.pod_network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodNetwork {
    /// A direct route to a node on a network this node is directly
    /// connected to, the VXLAN overlay to any other (Flannel's vxlan with
    /// `DirectRouting`).
    #[default]
    Auto,
    /// Direct routes via the other nodes' addresses only (Flannel's
    /// host-gw): every node on one layer-2 network.
    HostGw,
    /// The VXLAN overlay to every node (Flannel's vxlan).
    Vxlan,
}

impl PodNetwork {
    /// As the config and the orchestrator's `--pod-network` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodNetwork::Auto => "auto",
            PodNetwork::HostGw => "host-gw",
            PodNetwork::Vxlan => "vxlan",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// DNS-1123 label.
    pub name: String,
    /// The cluster's identity (`osctl gen config` derives it from the
    /// cluster CA: [`cluster_id_of_ca`]). The first applied config that
    /// carries one pins it: the node then refuses configs of any other
    /// cluster, and configs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub role: Role,
    /// `https://host:6443` of the control plane. Required on workers;
    /// on a control-plane node it defaults to its own first address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Every control plane's `https://host:6443` (an HA control plane): a
    /// worker's kubelet uses the first that answers and moves to another
    /// when it stops answering. With `endpoint`, that one comes first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Default: `sqlite`. `etcd` (an HA control plane): init runs an etcd
    /// member on this node, its peers being the control planes of
    /// `endpoints`, and the orchestrator keeps its objects there.
    #[serde(default)]
    pub datastore: Datastore,
    /// With `datastore = "etcd"`: this control plane forms a new etcd
    /// cluster (k3s' `--cluster-init`) when it has no etcd data yet; the
    /// others join it through a running member. Set on exactly one node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub etcd_bootstrap: bool,
    /// Default: `10.244.0.0/16`.
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    /// Default: `10.96.0.0/12`.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// Default: `auto`. How this node reaches the other nodes' pods:
    /// `host-gw`, `vxlan` or `auto` ([`PodNetwork`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod_network: PodNetwork,
    /// The bootstrap token a worker joins with (`[a-z0-9]{6}.[a-z0-9]{16}`,
    /// as kubeadm's); a control plane stores its own at start. Required on
    /// workers, which pin the Kubernetes CA ([`MachineConfig::kube_ca`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM certificate of the Kubernetes CA: the API server's serving
    /// certificate, kubelet and kubectl certificates and the CSR signer
    /// chain to it, and workers pin it. Default: `api.ca_cert` (one CA for
    /// both, the form before the roots were split; a warning says how to
    /// split them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// PEM key of the Kubernetes CA: on control planes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

/// The Kubernetes CA of a config ([`MachineConfig::kube_ca`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeCa<'a> {
    pub cert_pem: &'a str,
    /// The CA key, when the config carries it (a control plane).
    pub key_pem: Option<&'a str>,
    /// The field the certificate came from: `cluster.ca_cert`, or
    /// `api.ca_cert` in a config of the one-CA form.
    pub field: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// PEM certificate of the CA that client certificates must chain to.
    pub ca_cert: String,
    /// PEM key of that CA. When present (and `cert`/`key` are not), the
    /// node issues its own serving certificate from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    /// PEM serving certificate and key for apid, issued by the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Extra names and addresses for the issued serving certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// Default: 50000.
    #[serde(default = "default_api_port")]
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// Default: `["apid"]`. Must include apid. Known: [`SERVICE_CATALOGUE`].
    #[serde(default = "default_services")]
    pub enable: Vec<String>,
}

impl Default for Services {
    fn default() -> Self {
        Services { enable: default_services() }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn default_kind() -> String {
    KIND.to_string()
}
fn default_pod_cidr() -> String {
    "10.244.0.0/16".to_string()
}
fn default_service_cidr() -> String {
    "10.96.0.0/12".to_string()
}
fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}
fn default_services() -> Vec<String> {
    vec!["apid".to_string()]
}

/// One problem found in a config, located in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `machine.network.interfaces[1].name`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " — {h}")?;
        }
        Ok(())
    }
}

/// Every problem found in a config; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the config:", if n == 1 { "" } else { "s" })?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A Plinth release as configs name it: `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u64,
    pub minor: u64,
}

impl Release {
    /// This build's release (from [`crate::VERSION`]).
    pub fn this() -> Release {
        Release::try_from(crate::VERSION).unwrap_or(Release { major: 0, minor: 0 })
    }

    /// The release whose configs this one reads with warnings for keys it
    /// does not know: the next minor.
    pub fn next_minor(self) -> Release {
        Release { minor: self.minor + 1, ..self }
    }
}

impl TryFrom<&str> for Release {
    type Error = String;
    /// `MAJOR.MINOR`, or a full `MAJOR.MINOR.PATCH` version.
    fn try_from(s: &str) -> Result<Release, String> {
        let bad = || format!("{s:?} is not a Plinth release (MAJOR.MINOR, e.g. \"0.1\")");
        let parts: Vec<&str> = s.split('.').collect();
        if !(2..=3).contains(&parts.len())
            || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        Ok(Release { major: parts[0].parse().map_err(|_| bad())?, minor: parts[1].parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A config that parsed, and what deserves a word without stopping it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: MachineConfig,
    /// Keys of a newer release that were ignored, a Kubernetes CA that is
    /// the machine API's: each located as an error would be.
    pub warnings: Vec<Diagnostic>,
}

impl MachineConfig {
    /// Parses and validates `text`; `file` names it in diagnostics.
    /// Warnings are dropped: [`MachineConfig::parse_with_warnings`] has them.
    pub fn parse(file: &str, text: &str) -> Result<MachineConfig, Diagnostics> {
        Self::parse_with_warnings(file, text).map(|p| p.config)
    }

    /// Parses and validates `text` as this release reads it.
    pub fn parse_with_warnings(file: &str, text: &str) -> Result<Parsed, Diagnostics> {
        Self::parse_as(Release::this(), file, text)
    }

    /// Parses and validates `text` as a node of release `reader` reads it:
    /// keys unknown to it are warnings in a config written for
    /// `reader.next_minor()`, errors otherwise.
    pub fn parse_as(reader: Release, file: &str, text: &str) -> Result<Parsed, Diagnostics> {
        let (root, syntax) = DeTable::parse_recoverable(text);
        let mut cx =
            Checker { file, text, root: root.get_ref(), reader, newer: None, diags: Vec::new(), warnings: Vec::new() };
        if !syntax.is_empty() {
            for e in syntax {
                let at = e.span().map_or(0, |s| s.start);
                cx.push_at(at, "", e.message().trim_end().to_string(), None);
            }
            return Err(Diagnostics(cx.diags));
        }
        let doc = cx.decode(root.get_ref());
        if let Some(doc) = &doc {
            cx.check(doc);
        }
        match doc {
            Some(config) if cx.diags.is_empty() => {
                cx.warnings.sort_by_key(|d| (d.line, d.column));
                Ok(Parsed { config, warnings: cx.warnings })
            }
            _ => {
                cx.diags.sort_by_key(|d| (d.line, d.column));
                Err(Diagnostics(cx.diags))
            }
        }
    }

    /// The config as TOML, as `osctl gen config` writes it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    /// The Kubernetes API endpoint: the configured one, or on a control
    /// plane its own first static address.
    pub fn kube_endpoint(&self) -> Option<String> {
        self.cluster.endpoint.clone().or_else(|| {
            let first = self
                .machine
                .network
                .interfaces
                .iter()
                .flat_map(|i| i.addresses.iter())
                .find_map(|a| a.parse::<IpNet>().ok())?;
            Some(format!("https://{}:{KUBE_API_PORT}", first.addr()))
        })
    }

    /// The addresses of the control planes' etcd members: the IP hosts of
    /// [`MachineConfig::kube_endpoints`], in order, without repeats (a name
    /// is skipped: etcd's peer certificates are issued for addresses).
    pub fn etcd_peers(&self) -> Vec<std::net::IpAddr> {
        let mut peers = Vec::new();
        for ep in self.kube_endpoints() {
            let rest = ep.split_once("://").map_or(ep.as_str(), |(_, r)| r);
            let host = rest.split('/').next().unwrap_or("");
            let host = if host.starts_with('[') {
                host.split(']').next().unwrap_or("").trim_start_matches('[')
            } else {
                host.rsplit_once(':').map_or(host, |(h, _)| h)
            };
            if let Ok(ip) = host.parse::<std::net::IpAddr>()
                && !peers.contains(&ip)
            {
                peers.push(ip);
            }
        }
        peers
    }

    /// This node's etcd address: its static address that is one of
    /// [`MachineConfig::etcd_peers`].
    pub fn etcd_address(&self) -> Option<std::net::IpAddr> {
        let peers = self.etcd_peers();
        self.machine
            .network
            .interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .filter_map(|a| a.parse::<IpNet>().ok())
            .map(|n| n.addr())
            .find(|a| peers.contains(a))
    }

    /// Every Kubernetes API endpoint a client may use, in order:
    /// `cluster.endpoint` (or this control plane's own), then
    /// `cluster.endpoints` without repeats.
    pub fn kube_endpoints(&self) -> Vec<String> {
        let mut all: Vec<String> = self.cluster.endpoint.iter().cloned().collect();
        if all.is_empty() && self.cluster.endpoints.is_empty() {
            all.extend(self.kube_endpoint());
        }
        for ep in &self.cluster.endpoints {
            if !all.contains(ep) {
                all.push(ep.clone());
            }
        }
        all
    }

    /// The Kubernetes CA: `cluster.ca_cert` and `ca_key`; in a config of
    /// the one-CA form (no `cluster.ca_cert`), the machine API's.
    pub fn kube_ca(&self) -> KubeCa<'_> {
        match &self.cluster.ca_cert {
            Some(cert) => KubeCa { cert_pem: cert, key_pem: self.cluster.ca_key.as_deref(), field: "cluster.ca_cert" },
            None => KubeCa { cert_pem: &self.api.ca_cert, key_pem: self.api.ca_key.as_deref(), field: "api.ca_cert" },
        }
    }

    /// This config with every secret replaced by a short digest, so diffs
    /// and logs show that a secret changed without showing it.
    pub fn redacted(&self) -> MachineConfig {
        use sha2::Digest as _;
        let hide = |s: &String| {
            let d = sha2::Sha256::digest(s.as_bytes());
            format!("(secret, sha256 {:02x}{:02x}{:02x}{:02x}…)", d[0], d[1], d[2], d[3])
        };
        let mut c = self.clone();
        c.api.ca_key = c.api.ca_key.as_ref().map(hide);
        c.api.key = c.api.key.as_ref().map(hide);
        c.cluster.token = c.cluster.token.as_ref().map(hide);
        c.cluster.ca_key = c.cluster.ca_key.as_ref().map(hide);
        c
    }
}

/// The cluster identity `osctl gen config` writes: from the cluster CA's
/// certificate, so every config made from the same secrets carries the
/// same one (`c-` and 24 hexadecimal characters of its sha256).
pub fn cluster_id_of_ca(ca_cert_pem: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(ca_cert_pem.trim().as_bytes());
    format!("c-{}", d[..12].iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// A new random bootstrap token in kubeadm's format, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn generate_token() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut chars = String::new();
    while chars.len() < 22 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        // 252 = 7 × 36: bytes above it are dropped so every character is equally likely.
        chars.extend(b.iter().filter(|x| **x < 252).map(|x| ALPHABET[usize::from(*x) % 36] as char));
    }
    Ok(format!("{}.{}", &chars[..6], &chars[6..22]))
}

/// Whether `t` is a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn is_bootstrap_token(t: &str) -> bool {
    let part = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    t.split_once('.').is_some_and(|(id, secret)| part(id, 6) && part(secret, 16))
}

/// Fields whose change needs a reboot to take effect.
pub fn reboot_required(old: &MachineConfig, new: &MachineConfig) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.cluster.role != new.cluster.role {
        v.push("cluster.role");
    }
    if old.cluster.datastore != new.cluster.datastore {
        v.push("cluster.datastore");
    }
    if old.cluster.pod_cidr != new.cluster.pod_cidr {
        v.push("cluster.pod_cidr");
    }
    if old.cluster.service_cidr != new.cluster.service_cidr {
        v.push("cluster.service_cidr");
    }
    if old.cluster.pod_network != new.cluster.pod_network {
        v.push("cluster.pod_network");
    }
    // The orchestrator reads its CA when it starts.
    if old.kube_ca() != new.kube_ca() {
        v.push("cluster.ca_cert");
    }
    // init configures the network at boot; live reconfiguration is not
    // there yet.
    if old.machine.network != new.machine.network {
        v.push("machine.network");
    }
    v
}

/// A unified diff of two configs with their secrets redacted.
pub fn diff(old: Option<&MachineConfig>, new: &MachineConfig) -> String {
    let old_text = old.map(|c| c.redacted().to_toml()).unwrap_or_default();
    let new_text = new.redacted().to_toml();
    similar::TextDiff::from_lines(&old_text, &new_text)
        .unified_diff()
        .context_radius(2)
        .header("stored", "new")
        .to_string()
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    root: &'a DeTable<'a>,
    /// The release reading the config.
    reader: Release,
    /// The config's `plinth` release when it is newer than the reader's.
    newer: Option<Release>,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

/// Removes the key at `path` (below a section) from a decoded value.
fn remove_at(v: &mut Spanned<DeValue<'_>>, path: &[Seg<'_>]) -> bool {
    match (path, v.get_mut()) {
        ([Seg::Key(k)], DeValue::Table(t)) => t.remove(*k).is_some(),
        ([Seg::Key(k), rest @ ..], DeValue::Table(t)) => t.get_mut(*k).is_some_and(|c| remove_at(c, rest)),
        ([Seg::Index(i), rest @ ..], DeValue::Array(a)) => a.get_mut(*i).is_some_and(|c| remove_at(c, rest)),
        _ => false,
    }
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn diagnostic(&self, offset: usize, path: &str, message: String, hint: Option<String>) -> Diagnostic {
        let (line, column) = self.position(offset);
        Diagnostic { file: self.file.to_string(), line, column, path: path.to_string(), message, hint }
    }

    fn push_at(&mut self, offset: usize, path: &str, message: String, hint: Option<String>) {
        let d = self.diagnostic(offset, path, message, hint);
        self.diags.push(d);
    }

    fn warn(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let d = self.diagnostic(self.span_of(path).start, path, message.into(), hint);
        self.warnings.push(d);
    }

    /// The source span of the value at `path`, or of its nearest ancestor
    /// present in the document (a defaulted field has no span of its own).
    fn span_of(&self, path: &str) -> Range<usize> {
        let mut best = 0..0;
        let mut table = Some(self.root);
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for seg in parse_path(path) {
            let next: Option<&Spanned<DeValue<'_>>> = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => t.get(k),
                (Seg::Index(i), _, Some(a)) => a.get(i),
                _ => None,
            };
            let Some(v) = next else { break };
            best = v.span();
            table = v.get_ref().as_table();
            array = v.get_ref().as_array();
        }
        best
    }

    fn error(&mut self, path: &str, message: impl Into<String>, hint: Option<String>) {
        let at = self.span_of(path).start;
        self.push_at(at, path, message.into(), hint);
    }

    /// Decodes the document section by section so each section's first
    /// structural error is reported, not just the document's first.
    fn decode(&mut self, root: &DeTable<'_>) -> Option<MachineConfig> {
        const TOP: &[&str] = &["plinth", "version", "kind", "machine", "cluster", "api", "services"];
        let plinth: Option<String> = self.section(root, "plinth", false);
        if let Some(p) = &plinth {
            match Release::try_from(p.as_str()) {
                Ok(written) if written > self.reader => self.newer = Some(written),
                Ok(_) => {}
                Err(e) => self.error("plinth", e, Some(format!("osctl gen config writes \"{}\"", Release::this()))),
            }
        }
        for (k, _) in root.iter() {
            if !TOP.contains(&k.get_ref().as_ref()) {
                let name = k.get_ref().to_string();
                let hint = suggest(&name, TOP);
                self.unknown_key(k.span().start, &name, format!("unknown key `{name}`"), hint);
            }
        }
        let version: Option<u64> = self.section(root, "version", true);
        let kind: Option<String> = self.section(root, "kind", false);
        let machine: Option<Machine> = self.section(root, "machine", true);
        let cluster: Option<Cluster> = self.section(root, "cluster", true);
        let api: Option<Api> = self.section(root, "api", true);
        let services: Option<Services> = self.section(root, "services", false);
        Some(MachineConfig {
            plinth,
            version: version?,
            kind: kind.unwrap_or_else(default_kind),
            machine: machine?,
            cluster: cluster?,
            api: api?,
            services: services.unwrap_or_default(),
        })
    }

    fn section<T: DeserializeOwned>(&mut self, root: &DeTable<'_>, key: &str, required: bool) -> Option<T> {
        let Some(value) = root.get(key) else {
            if required {
                self.push_at(0, key, format!("missing required `{key}`"), None);
            }
            return None;
        };
        let mut owned = value.clone();
        owned.get_mut().make_owned();
        let span = owned.span();
        loop {
            match T::deserialize(owned.clone().into_deserializer()) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let at = e.span().map_or(span.start, |s| s.start);
                    let unknown = e.message().starts_with("unknown field `");
                    let (message, hint) = describe_serde_error(e.message());
                    let path = self.path_at(key, at);
                    // A key of the next minor release: said, dropped, and
                    // the section decoded again without it.
                    if unknown && self.lenient() && remove_at(&mut owned, &parse_path(&path)[1..]) {
                        self.unknown_key(at, &path, message, hint);
                        continue;
                    }
                    self.unknown_key_hint(at, &path, message, hint, unknown);
                    return None;
                }
            }
        }
    }

    /// Whether keys this release does not know are warnings: the config
    /// was written for the next minor release.
    fn lenient(&self) -> bool {
        self.newer == Some(self.reader.next_minor())
    }

    /// A key this release does not know: a warning in a config of the next
    /// minor release, else an error.
    fn unknown_key(&mut self, at: usize, path: &str, message: String, hint: Option<String>) {
        if let (true, Some(newer)) = (self.lenient(), self.newer) {
            let message = format!(
                "{message} ignored: the config was written for Plinth {newer}, one minor release newer than this node's {}",
                self.reader
            );
            let d = self.diagnostic(at, path, message, None);
            self.warnings.push(d);
        } else {
            self.unknown_key_hint(at, path, message, hint, true);
        }
    }

    /// An error; for an unknown key in a config of a release more than one
    /// minor newer, the hint says why it is not just ignored.
    fn unknown_key_hint(&mut self, at: usize, path: &str, message: String, hint: Option<String>, unknown: bool) {
        let hint = match self.newer {
            Some(newer) if unknown && hint.is_none() => Some(format!(
                "the config was written for Plinth {newer}; this node runs {} and reads keys it does not know only from {}",
                self.reader,
                self.reader.next_minor()
            )),
            _ => hint,
        };
        self.push_at(at, path, message, hint);
    }

    /// Best field path for an error at `offset` inside section `key`: the
    /// deepest key whose span holds the offset.
    fn path_at(&self, key: &str, offset: usize) -> String {
        fn walk(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
            match v.get_ref() {
                DeValue::Table(t) => {
                    for (k, child) in t.iter() {
                        let within = |s: Range<usize>| s.start <= offset && offset < s.end.max(s.start + 1);
                        if within(child.span()) || within(k.span()) {
                            path.push('.');
                            path.push_str(k.get_ref());
                            walk(child, offset, path);
                            return;
                        }
                    }
                }
                DeValue::Array(a) => {
                    for (i, child) in a.iter().enumerate() {
                        let s = child.span();
                        if s.start <= offset && offset < s.end {
                            path.push_str(&format!("[{i}]"));
                            walk(child, offset, path);
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
        /// The key whose own span holds `offset`, anywhere below `v` (the
        /// span of a table made by a `[[header]]` does not hold its keys).
        fn find_key(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
            let mut within = |seg: String, key_span: Option<Range<usize>>, child: &Spanned<DeValue<'_>>| {
                let len = path.len();
                path.push_str(&seg);
                let found =
                    key_span.is_some_and(|s| s.start <= offset && offset < s.end) || find_key(child, offset, path);
                if !found {
                    path.truncate(len);
                }
                found
            };
            match v.get_ref() {
                DeValue::Table(t) => {
                    t.iter().any(|(k, child)| within(format!(".{}", k.get_ref()), Some(k.span()), child))
                }
                DeValue::Array(a) => a.iter().enumerate().any(|(i, child)| within(format!("[{i}]"), None, child)),
                _ => false,
            }
        }
        let mut path = key.to_string();
        if let Some(v) = self.root.get(key)
            && !find_key(v, offset, &mut path)
        {
            walk(v, offset, &mut path);
        }
        path
    }

    fn check(&mut self, c: &MachineConfig) {
        if c.version == 0 {
            self.error("version", "must be 1 or more", Some("versions start at 1 and grow with every change".into()));
        }
        if c.kind != KIND {
            self.error("kind", format!("{:?} is not a machine config", c.kind), Some(format!("use kind = \"{KIND}\"")));
        }
        self.check_machine(&c.machine);
        self.check_cluster(c);
        self.check_api(&c.api);
        self.check_services(&c.services);
    }

    fn check_machine(&mut self, m: &Machine) {
        if let Err(e) = Hostname::try_from(m.hostname.as_str()) {
            self.error("machine.hostname", e, None);
        }
        for (i, s) in m.ntp.iter().enumerate() {
            if s.trim().is_empty() || s.contains(char::is_whitespace) {
                self.error(&format!("machine.ntp[{i}]"), format!("{s:?} is not a host name or address"), None);
            }
        }
        let mut names = HashSet::new();
        for (i, iface) in m.network.interfaces.iter().enumerate() {
            let p = format!("machine.network.interfaces[{i}]");
            if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ']) {
                self.error(
                    &format!("{p}.name"),
                    format!("{:?} is not a valid interface name (1–15 characters, no '/' or spaces)", iface.name),
                    None,
                );
            } else if !names.insert(iface.name.as_str()) {
                self.error(
                    &format!("{p}.name"),
                    format!("interface {:?} is configured twice", iface.name),
                    Some("merge the two entries into one".into()),
                );
            }
            if !iface.dhcp && iface.addresses.is_empty() {
                self.error(
                    &p,
                    format!("interface {:?} has no address", iface.name),
                    Some("set dhcp = true or add addresses = [\"10.0.0.5/24\"]".into()),
                );
            }
            for (j, a) in iface.addresses.iter().enumerate() {
                if let Err((msg, hint)) = parse_cidr(a, true) {
                    self.error(&format!("{p}.addresses[{j}]"), msg, hint);
                }
            }
            if let Some(mtu) = iface.mtu
                && !(68..=9216).contains(&mtu)
            {
                self.error(
                    &format!("{p}.mtu"),
                    format!("{mtu} is out of range"),
                    Some("an MTU is between 68 and 9216".into()),
                );
            }
        }
        for (i, r) in m.network.routes.iter().enumerate() {
            let p = format!("machine.network.routes[{i}]");
            if let Err((msg, hint)) = parse_cidr(&r.to, false) {
                self.error(&format!("{p}.to"), msg, hint);
            }
            if r.via.parse::<IpAddr>().is_err() {
                self.error(&format!("{p}.via"), format!("{:?} is not an IP address", r.via), None);
            }
            if let Some(ifn) = &r.interface
                && !m.network.interfaces.iter().any(|x| &x.name == ifn)
            {
                let known: Vec<&str> = m.network.interfaces.iter().map(|x| x.name.as_str()).collect();
                self.error(
                    &format!("{p}.interface"),
                    format!("no interface named {ifn:?} is configured"),
                    suggest(ifn, &known),
                );
            }
        }
        for (i, ns) in m.network.nameservers.iter().enumerate() {
            if ns.parse::<IpAddr>().is_err() {
                self.error(
                    &format!("machine.network.nameservers[{i}]"),
                    format!("{ns:?} is not an IP address"),
                    Some("name servers are given by address, e.g. \"1.1.1.1\"".into()),
                );
            }
        }
    }

    fn check_cluster(&mut self, c: &MachineConfig) {
        let cl = &c.cluster;
        if let Some(id) = &cl.id
            && (id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
        {
            self.error(
                "cluster.id",
                format!("{id:?} is not a cluster identity"),
                Some("use 1 to 64 letters, digits, '-', '.' or '_' (osctl gen config writes one)".into()),
            );
        }
        if !is_dns1123_label(&cl.name) {
            self.error("cluster.name", format!("{:?} is not a DNS-1123 label", cl.name), Some("use lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit".into()));
        }
        match &cl.endpoint {
            Some(ep) => {
                if let Err((msg, hint)) = check_endpoint(ep) {
                    self.error("cluster.endpoint", msg, hint);
                }
            }
            None if cl.role == Role::Worker && cl.endpoints.is_empty() => {
                self.error(
                    "cluster",
                    "a worker needs `endpoint` (or `endpoints`), the control plane it joins",
                    Some("add endpoint = \"https://<control-plane address>:6443\"".into()),
                );
            }
            None => {}
        }
        for (i, ep) in cl.endpoints.iter().enumerate() {
            let path = format!("cluster.endpoints[{i}]");
            if let Err((msg, hint)) = check_endpoint(ep) {
                self.error(&path, msg, hint);
            } else if cl.endpoints[..i].contains(ep) {
                self.error(&path, format!("{ep:?} is listed twice"), Some("list each control plane once".into()));
            }
        }
        if let Some(t) = &cl.token
            && !is_bootstrap_token(t)
        {
            self.error(
                "cluster.token",
                "is not a bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}",
                Some("`osctl gen config` makes one; `orchestrator token create` on the control plane another".into()),
            );
        }
        if cl.role == Role::Worker {
            if cl.token.is_none() {
                self.error(
                    "cluster",
                    "a worker needs `token` to join the cluster",
                    Some("copy the token from the control plane's config".into()),
                );
            }
            if cl.datastore == Datastore::Etcd {
                self.error(
                    "cluster.datastore",
                    "only a control-plane node runs a datastore",
                    Some("remove `datastore` from a worker's config".into()),
                );
            }
        }
        self.check_etcd(c);
        self.check_kube_ca(c);
        let pod = parse_cidr(&cl.pod_cidr, false).map_err(|(m, h)| self.error("cluster.pod_cidr", m, h)).ok();
        let svc = parse_cidr(&cl.service_cidr, false).map_err(|(m, h)| self.error("cluster.service_cidr", m, h)).ok();
        if let (Some(p), Some(s)) = (pod, svc)
            && overlaps(&p, &s)
        {
            self.error(
                "cluster.service_cidr",
                format!("{s} overlaps the pod network {p}"),
                Some(
                    "pick disjoint ranges, e.g. pod_cidr = \"10.244.0.0/16\" and service_cidr = \"10.96.0.0/12\""
                        .into(),
                ),
            );
        }
        for (i, iface) in c.machine.network.interfaces.iter().enumerate() {
            for (j, a) in iface.addresses.iter().enumerate() {
                let Ok(net) = a.parse::<IpNet>() else {
                    continue;
                };
                for (name, cluster_net) in [("pod_cidr", pod), ("service_cidr", svc)] {
                    if let Some(cn) = cluster_net
                        && overlaps(&net.trunc(), &cn)
                    {
                        self.error(
                            &format!("machine.network.interfaces[{i}].addresses[{j}]"),
                            format!("{a} overlaps cluster.{name} {cn}"),
                            Some("node addresses and cluster networks must not overlap".into()),
                        );
                    }
                }
            }
        }
    }

    /// An etcd control plane: its member's peers are the control planes of
    /// `cluster.endpoints` (by address), its certificates are issued from
    /// the Kubernetes CA, and its address is the one on their network.
    fn check_etcd(&mut self, c: &MachineConfig) {
        let cl = &c.cluster;
        if cl.datastore != Datastore::Etcd {
            if cl.etcd_bootstrap {
                self.error(
                    "cluster.etcd_bootstrap",
                    "only a control plane with datastore = \"etcd\" forms an etcd cluster",
                    Some("set datastore = \"etcd\", or remove etcd_bootstrap".into()),
                );
            }
            return;
        }
        if cl.role != Role::Controlplane {
            return; // refused above
        }
        if c.kube_ca().key_pem.is_none() {
            self.error(
                "cluster.datastore",
                "an etcd member needs the Kubernetes CA's key to issue its certificates",
                Some("add cluster.ca_key (osctl gen config --role controlplane writes it)".into()),
            );
        }
        if c.etcd_peers().is_empty() {
            self.error(
                "cluster.endpoints",
                "an etcd control plane needs the control planes' addresses",
                Some("list every control plane as endpoints = [\"https://10.0.0.1:6443\", ...] (IP addresses)".into()),
            );
        } else if c.etcd_address().is_none() {
            self.error(
                "machine.network.interfaces",
                "an etcd control plane needs a static address on the network of its cluster.endpoints",
                Some("give the interface on the control planes' network an address, e.g. 10.0.0.1/24".into()),
            );
        }
    }

    /// The Kubernetes CA: its own (`cluster.ca_cert`, with its key on a
    /// control plane and never on a worker), or the machine API's.
    fn check_kube_ca(&mut self, c: &MachineConfig) {
        let cl = &c.cluster;
        let Some(cert) = &cl.ca_cert else {
            if let Some(key) = &cl.ca_key {
                self.error(
                    "cluster.ca_key",
                    "is set without `ca_cert`",
                    Some("give the Kubernetes CA's certificate with its key".into()),
                );
                self.check_ca_key("cluster", None, key);
            } else {
                self.warn(
                    "cluster",
                    "no `ca_cert`: the Kubernetes API trusts the machine API's CA (api.ca_cert), so a kubectl certificate is also an osctl certificate",
                    Some("split the roots: `osctl gen kube-ca --out <secrets>`, then `osctl gen config` again (docs/trust.md)".into()),
                );
            }
            return;
        };
        let cert_ok = self.check_ca_cert("cluster", cert);
        match (&cl.ca_key, cl.role) {
            (Some(_), Role::Worker) => self.error(
                "cluster.ca_key",
                "a worker holds no CA key: its kubelet joins with `token` and gets its certificate from the control plane",
                Some("remove ca_key from a worker's config".into()),
            ),
            (Some(key), Role::Controlplane) => self.check_ca_key("cluster", cert_ok.then_some(cert.as_str()), key),
            (None, Role::Controlplane) => self.error(
                "cluster",
                "a control plane needs the Kubernetes CA's `ca_key` with its `ca_cert`: it signs the kubelets' and kubectl's certificates",
                Some("take kube-ca.key from the same `osctl gen keys` output".into()),
            ),
            (None, Role::Worker) => {}
        }
    }

    /// Checks `<section>.ca_cert`; whether it is a CA certificate.
    fn check_ca_cert(&mut self, section: &str, cert: &str) -> bool {
        match crate::pki::check_ca_cert(cert) {
            Ok(_) => true,
            Err(e) => {
                self.error(&format!("{section}.ca_cert"), e.to_string(), None);
                false
            }
        }
    }

    /// Checks `<section>.ca_key`, and that it is the key of `cert` when that
    /// is a valid certificate.
    fn check_ca_key(&mut self, section: &str, cert: Option<&str>, key: &str) {
        let path = format!("{section}.ca_key");
        match crate::pki::check_key(key) {
            Err(e) => self.error(&path, e.to_string(), None),
            Ok(()) => {
                if let Some(cert) = cert
                    && let Err(e @ crate::pki::PkiError::KeyMismatch) = crate::pki::check_key_matches(cert, key)
                {
                    self.error(
                        &path,
                        format!("{e} ({section}.ca_cert)"),
                        Some("take ca_cert and ca_key from the same `osctl gen keys` output".into()),
                    );
                }
            }
        }
    }

    fn check_api(&mut self, api: &Api) {
        let cert_ok = self.check_ca_cert("api", &api.ca_cert);
        if let Some(k) = &api.ca_key {
            self.check_ca_key("api", cert_ok.then_some(api.ca_cert.as_str()), k);
        }
        match (&api.cert, &api.key) {
            (Some(cert), Some(key)) => {
                let cert_ok = match crate::pki::check_cert(cert) {
                    Err(e) => {
                        self.error("api.cert", e.to_string(), None);
                        false
                    }
                    Ok(_) => true,
                };
                match crate::pki::check_key(key) {
                    Err(e) => self.error("api.key", e.to_string(), None),
                    Ok(()) if cert_ok => {
                        if let Err(e) = crate::pki::check_key_matches(cert, key) {
                            self.error(
                                "api.key",
                                format!("{e} (api.cert)"),
                                Some("give the key api.cert was issued for".into()),
                            );
                        }
                    }
                    Ok(()) => {}
                }
            }
            (Some(_), None) => {
                self.error("api.cert", "is set without `key`", Some("give both cert and key, or neither".into()))
            }
            (None, Some(_)) => {
                self.error("api.key", "is set without `cert`", Some("give both cert and key, or neither".into()))
            }
            (None, None) if api.ca_key.is_none() => self.error(
                "api",
                "the node has no way to get a serving certificate",
                Some("set `ca_key` (the node issues its own) or `cert` and `key`".into()),
            ),
            (None, None) => {}
        }
        for (i, san) in api.cert_sans.iter().enumerate() {
            if san.parse::<IpAddr>().is_err() && Hostname::try_from(san.as_str()).is_err() {
                self.error(
                    &format!("api.cert_sans[{i}]"),
                    format!("{san:?} is neither an IP address nor a DNS name"),
                    None,
                );
            }
        }
        if api.port == 0 {
            self.error("api.port", "0 is not a port", Some(format!("the default is {DEFAULT_API_PORT}")));
        }
    }

    fn check_services(&mut self, s: &Services) {
        let mut seen = HashSet::new();
        for (i, name) in s.enable.iter().enumerate() {
            let p = format!("services.enable[{i}]");
            if !SERVICE_CATALOGUE.contains(&name.as_str()) {
                self.error(
                    &p,
                    format!("unknown service {name:?}"),
                    suggest(name, SERVICE_CATALOGUE)
                        .or_else(|| Some(format!("known services: {}", SERVICE_CATALOGUE.join(", ")))),
                );
            } else if !seen.insert(name.as_str()) {
                self.error(&p, format!("{name:?} is listed twice"), None);
            }
        }
        if !s.enable.iter().any(|n| n == "apid") {
            self.error("services.enable", "must include \"apid\": it is the node's only management interface", None);
        }
    }
}

/// A valid RFC 1123 host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl TryFrom<&str> for Hostname {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Ok(Hostname(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a valid host name (letters, digits and '-', dot-separated labels of at most 63 characters)"
            ))
        }
    }
}

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

type Problem = (String, Option<String>);

fn parse_cidr(s: &str, host_address: bool) -> Result<IpNet, Problem> {
    match s.parse::<IpNet>() {
        Ok(n) if !host_address && n.trunc() != n => {
            Err((format!("{s:?} has host bits set"), Some(format!("did you mean \"{}\"?", n.trunc()))))
        }
        Ok(n) => Ok(n),
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => Err((
                format!("{s:?} has no prefix length"),
                Some(format!("did you mean \"{ip}/{}\"?", if ip.is_ipv4() { 24 } else { 64 })),
            )),
            Err(_) => Err((format!("{s:?} is not a CIDR (address/prefix)"), None)),
        },
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_endpoint(ep: &str) -> Result<(), Problem> {
    let hint_for = |host: &str| Some(format!("did you mean \"https://{host}:{KUBE_API_PORT}\"?"));
    let Some((scheme, rest)) = ep.split_once("://") else {
        return Err((format!("{ep:?} is not a URL"), hint_for(ep.trim_end_matches('/'))));
    };
    let uri: http::Uri = ep.parse().map_err(|_| (format!("{ep:?} is not a URL"), None))?;
    let host = uri.host().unwrap_or(rest);
    if scheme != "https" {
        return Err((format!("{ep:?} must use https"), hint_for(host)));
    }
    if host.is_empty() {
        return Err((format!("{ep:?} has no host"), None));
    }
    if uri.port_u16().is_none() {
        return Err((format!("{ep:?} has no port"), hint_for(host)));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err((format!("{ep:?} must not have a path"), hint_for(host)));
    }
    Ok(())
}

/// "did you mean …?" for a misspelt name, when one is close.
pub fn suggest(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Turns serde's messages into ours, with a hint for misspelt keys and
/// enum values ("unknown field `hostnme`, expected one of …").
fn describe_serde_error(msg: &str) -> Problem {
    let msg = msg.trim_end();
    for (prefix, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((word, tail)) = rest.split_once('`')
        {
            let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
            let hint = suggest(word, &expected)
                .or_else(|| (!expected.is_empty()).then(|| format!("expected one of: {}", expected.join(", "))));
            return (format!("unknown {what} `{word}`"), hint);
        }
    }
    (msg.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (String, String) {
        let ca = crate::pki::generate_ca("test").unwrap();
        (ca.cert_pem, ca.key_pem)
    }

    fn valid_text() -> String {
        let (cert, key) = ca();
        format!(
            r#"version = 3

[machine]
hostname = "node-1"

[[machine.network.interfaces]]
name = "eth0"
addresses = ["10.0.0.5/24"]

[[machine.network.routes]]
to = "0.0.0.0/0"
via = "10.0.0.1"

[cluster]
name = "demo"
role = "controlplane"

[api]
ca_cert = """{cert}"""
ca_key = """{key}"""
"#
        )
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        MachineConfig::parse("node.toml", text).unwrap_err().0
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let c = MachineConfig::parse("node.toml", &valid_text()).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.cluster.datastore, Datastore::Sqlite);
        assert_eq!(c.cluster.pod_cidr, "10.244.0.0/16");
        assert_eq!(c.api.port, DEFAULT_API_PORT);
        assert_eq!(c.services.enable, vec!["apid"]);
        assert_eq!(c.kube_endpoint().as_deref(), Some("https://10.0.0.5:6443"));
        assert_eq!(c.machine.ntp_servers(), ["pool.ntp.org"], "the default NTP server");
        let mut own = c.machine.clone();
        own.ntp = vec!["10.0.0.1".into()];
        assert_eq!(own.ntp_servers(), ["10.0.0.1"]);
        // What gen config writes parses back to the same config.
        assert_eq!(MachineConfig::parse("x", &c.to_toml()).unwrap(), c);
    }

    #[test]
    fn endpoints_list_every_control_plane_and_bad_ones_are_named_by_index() {
        let worker = |eps: &str| {
            valid_text().replace(
                "role = \"controlplane\"",
                &format!("role = \"worker\"\ntoken = \"abcdef.0123456789abcdef\"\nendpoints = [{eps}]"),
            )
        };
        let c =
            MachineConfig::parse("node.toml", &worker("\"https://10.0.0.1:6443\", \"https://10.0.0.2:6443\"")).unwrap();
        assert_eq!(c.kube_endpoints(), ["https://10.0.0.1:6443", "https://10.0.0.2:6443"]);
        assert_eq!(MachineConfig::parse("x", &c.to_toml()).unwrap(), c);
        // `endpoint` still valid, and first; a repeat is dropped.
        let both = worker("\"https://10.0.0.2:6443\", \"https://10.0.0.3:6443\"")
            .replace("role = \"worker\"", "role = \"worker\"\nendpoint = \"https://10.0.0.3:6443\"");
        let c = MachineConfig::parse("node.toml", &both).unwrap();
        assert_eq!(c.kube_endpoints(), ["https://10.0.0.3:6443", "https://10.0.0.2:6443"]);
        // A control plane without either: its own address.
        let own = MachineConfig::parse("node.toml", &valid_text()).unwrap();
        assert_eq!(own.kube_endpoints(), ["https://10.0.0.5:6443"]);
        let e = errors(&worker("\"https://10.0.0.1:6443\", \"10.0.0.2\", \"https://10.0.0.1:6443\""));
        let got: Vec<(&str, &str)> = e.iter().map(|d| (d.path.as_str(), d.message.as_str())).collect();
        assert_eq!(
            got,
            [
                ("cluster.endpoints[1]", "\"10.0.0.2\" is not a URL"),
                ("cluster.endpoints[2]", "\"https://10.0.0.1:6443\" is listed twice"),
            ]
        );
        assert_eq!(e[0].hint.as_deref(), Some("did you mean \"https://10.0.0.2:6443\"?"));
    }

    #[test]
    fn an_etcd_control_plane_finds_its_peers_and_its_own_address() {
        let ha = |extra: &str| {
            valid_text().replace(
                "role = \"controlplane\"",
                &format!(
                    "role = \"controlplane\"\ndatastore = \"etcd\"\nendpoints = [\"https://10.0.0.5:6443\", \"https://10.0.0.6:6443\", \"https://10.0.0.6:7443\"]{extra}"
                ),
            )
        };
        let c = MachineConfig::parse("node.toml", &ha("\netcd_bootstrap = true")).unwrap();
        assert!(c.cluster.etcd_bootstrap);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(c.etcd_peers(), [ip("10.0.0.5"), ip("10.0.0.6")]);
        assert_eq!(c.etcd_address(), Some(ip("10.0.0.5")));
        assert_eq!(MachineConfig::parse("x", &c.to_toml()).unwrap(), c);
        // A node whose address is none of the peers cannot be a member.
        let e = errors(&ha("").replace("10.0.0.5/24", "10.0.0.9/24"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "machine.network.interfaces");
        // etcd_bootstrap without etcd is refused, naming the field.
        let e =
            errors(&valid_text().replace("role = \"controlplane\"", "role = \"controlplane\"\netcd_bootstrap = true"));
        assert_eq!(e.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(), ["cluster.etcd_bootstrap"]);
    }

    #[test]
    fn endpoint_without_scheme_gets_the_documented_hint() {
        let text = valid_text().replace("role = \"controlplane\"", "role = \"controlplane\"\nendpoint = \"10.0.0.5\"");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "cluster.endpoint");
        assert_eq!((e[0].line, e[0].column), (17, 12));
        assert_eq!(
            e[0].to_string(),
            "node.toml:17:12 cluster.endpoint: \"10.0.0.5\" is not a URL — did you mean \"https://10.0.0.5:6443\"?"
        );
    }

    #[test]
    fn the_pod_network_is_chosen_by_name_and_a_wrong_one_is_located() {
        assert_eq!(MachineConfig::parse("node.toml", &valid_text()).unwrap().cluster.pod_network, PodNetwork::Auto);
        for (name, want) in [("auto", PodNetwork::Auto), ("host-gw", PodNetwork::HostGw), ("vxlan", PodNetwork::Vxlan)]
        {
            let text = valid_text()
                .replace("role = \"controlplane\"", &format!("role = \"controlplane\"\npod_network = \"{name}\""));
            let c = MachineConfig::parse("node.toml", &text).unwrap();
            assert_eq!((c.cluster.pod_network, c.cluster.pod_network.as_str()), (want, name));
            // Written back as read; the default not at all (older readers).
            assert_eq!(c.to_toml().contains("pod_network"), want != PodNetwork::Auto, "{}", c.to_toml());
            assert_eq!(MachineConfig::parse("node.toml", &c.to_toml()).unwrap(), c);
        }
        let text =
            valid_text().replace("role = \"controlplane\"", "role = \"controlplane\"\npod_network = \"host_gw\"");
        let line = text.lines().position(|l| l.starts_with("pod_network")).unwrap() + 1;
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!((e[0].path.as_str(), e[0].line), ("cluster.pod_network", line));
        assert_eq!(e[0].message, "unknown value `host_gw`");
        assert_eq!(e[0].hint.as_deref(), Some("did you mean `host-gw`?"));
        let e = errors(&valid_text().replace("role = \"controlplane\"", "role = \"controlplane\"\npod_network = 4"));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.pod_network"), "{e:#?}");
    }

    #[test]
    fn reports_every_structural_error_at_once() {
        let text = valid_text()
            .replace("hostname = \"node-1\"", "hostnme = \"node-1\"")
            .replace("role = \"controlplane\"", "role = \"controlplan\"")
            .replace("version = 3", "version = 3\nextra = 1");
        let e = errors(&text);
        let paths: Vec<&str> = e.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec!["extra", "machine.hostnme", "cluster.role"], "{e:#?}");
        assert_eq!(e[1].hint.as_deref(), Some("did you mean `hostname`?"));
        assert_eq!(e[2].message, "unknown value `controlplan`");
        assert_eq!(e[2].hint.as_deref(), Some("did you mean `controlplane`?"));
    }

    #[test]
    fn reports_every_semantic_error_at_once() {
        let text = valid_text()
            .replace("role = \"controlplane\"", "role = \"worker\"\npod_cidr = \"10.96.0.0/16\"")
            .replace("name = \"eth0\"", "name = \"eth0\"\nmtu = 20")
            .replace(
                "[[machine.network.routes]]",
                "[[machine.network.interfaces]]\nname = \"eth0\"\ndhcp = true\n\n[[machine.network.routes]]",
            )
            .replace("via = \"10.0.0.1\"", "via = \"gateway\"");
        let e = errors(&text);
        let msgs: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        let has = |s: &str| msgs.iter().any(|m| m.contains(s));
        assert!(has("interfaces[0].mtu: 20 is out of range"), "{msgs:#?}");
        assert!(has("interfaces[1].name: interface \"eth0\" is configured twice"), "{msgs:#?}");
        assert!(has("routes[0].via: \"gateway\" is not an IP address"), "{msgs:#?}");
        assert!(has("a worker needs `endpoint`"), "{msgs:#?}");
        assert!(has("a worker needs `token`"), "{msgs:#?}");
        assert!(has("cluster.service_cidr: 10.96.0.0/12 overlaps the pod network 10.96.0.0/16"), "{msgs:#?}");
        assert_eq!(e.len(), 6, "{msgs:#?}");
    }

    #[test]
    fn ca_key_of_another_ca_is_refused() {
        let (_, other_key) = ca();
        let text = valid_text();
        let start = text.find("ca_key = \"\"\"").unwrap();
        let text = format!("{}ca_key = \"\"\"{other_key}\"\"\"\n", &text[..start]);
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].path, "api.ca_key");
        assert!(e[0].message.contains("not the certificate's"), "{}", e[0]);
    }

    /// `valid_text` with a Kubernetes CA of its own (`cluster.ca_cert`,
    /// `ca_key` when given).
    fn split_text(kube_cert: &str, kube_key: Option<&str>) -> String {
        let key = kube_key.map(|k| format!("ca_key = \"\"\"{k}\"\"\"\n")).unwrap_or_default();
        valid_text().replacen("[cluster]\n", &format!("[cluster]\nca_cert = \"\"\"{kube_cert}\"\"\"\n{key}"), 1)
    }

    #[test]
    fn a_config_of_the_one_ca_form_uses_the_machine_api_ca_for_kubernetes_with_a_warning() {
        let p = MachineConfig::parse_with_warnings("node.toml", &valid_text()).unwrap();
        let kube = p.config.kube_ca();
        assert_eq!(kube.cert_pem, p.config.api.ca_cert);
        assert_eq!(kube.key_pem, p.config.api.ca_key.as_deref());
        assert_eq!(kube.field, "api.ca_cert");
        assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
        assert_eq!((p.warnings[0].path.as_str(), p.warnings[0].line), ("cluster", 14));
        assert!(
            p.warnings[0].message.contains("a kubectl certificate is also an osctl certificate"),
            "{}",
            p.warnings[0]
        );
        assert!(p.warnings[0].hint.as_deref().unwrap().contains("osctl gen kube-ca"), "{}", p.warnings[0]);
    }

    #[test]
    fn the_kubernetes_ca_is_its_own_and_each_ca_key_must_match_its_cert() {
        let (kube_cert, kube_key) = ca();
        let p = MachineConfig::parse_with_warnings("node.toml", &split_text(&kube_cert, Some(&kube_key))).unwrap();
        assert_eq!(p.warnings, [], "no warning once the roots are split");
        let kube = p.config.kube_ca();
        assert_eq!(
            (kube.cert_pem, kube.key_pem, kube.field),
            (kube_cert.as_str(), Some(kube_key.as_str()), "cluster.ca_cert")
        );
        assert_ne!(kube.cert_pem, p.config.api.ca_cert);
        let shown = p.config.redacted().to_toml();
        assert!(!shown.contains("PRIVATE KEY") && shown.contains("(secret, sha256"), "{shown}");
        assert_eq!(MachineConfig::parse("x", &p.config.to_toml()).unwrap(), p.config, "round trip");
        let one_ca = MachineConfig::parse("node.toml", &valid_text()).unwrap();
        assert_eq!(reboot_required(&one_ca, &p.config), ["cluster.ca_cert"], "the split needs a reboot");

        let (_, other_key) = ca();
        let e = errors(&split_text(&kube_cert, Some(&other_key)));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].path, "cluster.ca_key");
        assert!(
            e[0].message.contains("not the certificate's") && e[0].message.contains("(cluster.ca_cert)"),
            "{}",
            e[0]
        );

        // A control plane signs with it; a worker never holds it.
        let e = errors(&split_text(&kube_cert, None));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster"), "{e:#?}");
        assert!(e[0].message.contains("needs the Kubernetes CA's `ca_key`"), "{}", e[0]);
        let worker = |t: String| {
            t.replace(
                "role = \"controlplane\"",
                "role = \"worker\"\nendpoint = \"https://10.0.0.1:6443\"\ntoken = \"abcdef.0123456789abcdef\"",
            )
        };
        let e = errors(&worker(split_text(&kube_cert, Some(&kube_key))));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.ca_key"), "{e:#?}");
        assert!(e[0].message.contains("a worker holds no CA key"), "{}", e[0]);
        MachineConfig::parse("w.toml", &worker(split_text(&kube_cert, None))).unwrap();

        let e =
            errors(&valid_text().replacen("[cluster]\n", &format!("[cluster]\nca_key = \"\"\"{kube_key}\"\"\"\n"), 1));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.ca_key"), "{e:#?}");
        assert!(e[0].message.contains("without `ca_cert`"), "{}", e[0]);
        let e = errors(&split_text("not a certificate", Some(&kube_key)));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.ca_cert"), "{e:#?}");
    }

    /// `valid_text` written for `release`, with keys a newer release may
    /// add: at the top, in a section, in an array's table.
    fn newer_text(release: Option<Release>) -> String {
        newer_text_of(&valid_text(), release)
    }

    fn newer_text_of(base: &str, release: Option<Release>) -> String {
        let head = release.map(|r| format!("plinth = \"{r}\"\n")).unwrap_or_default();
        let text = base
            .replace("hostname = \"node-1\"", "hostname = \"node-1\"\nkernel_args = [\"quiet\"]")
            .replace("name = \"eth0\"", "name = \"eth0\"\nvlan = 7")
            .replace("[api]", "[firewall]\ndefault = \"deny\"\n\n[api]");
        format!("{head}{text}")
    }

    #[test]
    fn a_rolled_back_parser_reads_a_config_of_the_next_minor_with_warnings() {
        let this = Release::this();
        // The release before this one reads what this one's tools write.
        let older = Release { major: this.major, minor: this.minor.saturating_sub(1) };
        let reader = if older == this { Release { major: this.major, minor: 0 } } else { older };
        let base = valid_text();
        let p = MachineConfig::parse_as(reader, "node.toml", &newer_text_of(&base, Some(reader.next_minor()))).unwrap();
        let warned: Vec<(&str, usize, usize)> =
            p.warnings.iter().map(|d| (d.path.as_str(), d.line, d.column)).collect();
        assert_eq!(
            warned,
            [
                ("machine.kernel_args", 6, 1),
                ("machine.network.interfaces[0].vlan", 10, 1),
                ("cluster", 17, 1),
                ("firewall", 21, 2)
            ],
            "{:#?}",
            p.warnings
        );
        assert!(
            p.warnings[0]
                .message
                .contains(&format!("ignored: the config was written for Plinth {}", reader.next_minor())),
            "{}",
            p.warnings[0]
        );
        let plain = MachineConfig::parse("node.toml", &base).unwrap();
        assert_eq!(MachineConfig { plinth: None, ..p.config.clone() }, plain, "the known keys as they are");
        assert_eq!(p.config.plinth, Some(reader.next_minor().to_string()));
    }

    #[test]
    fn unknown_keys_stay_errors_unless_written_for_the_next_minor() {
        let this = Release::this();
        // A typo in a config of this release (or of no stated release).
        for text in [newer_text(Some(this)), newer_text(None)] {
            let e = errors(&text);
            let paths: Vec<(&str, usize)> = e.iter().map(|d| (d.path.as_str(), d.line)).collect();
            let top = if text.starts_with("plinth") { 1 } else { 0 };
            assert_eq!(paths, [("machine.kernel_args", 5 + top), ("firewall", 20 + top)], "{e:#?}");
        }
        // Two minors (or a major) ahead: errors, with the reason.
        for ahead in [Release { minor: this.minor + 2, ..this }, Release { major: this.major + 1, minor: 0 }] {
            let e = errors(&newer_text(Some(ahead)));
            assert_eq!(e.len(), 2, "{e:#?}");
            assert!(e[1].hint.as_deref().unwrap().contains(&format!("written for Plinth {ahead}")), "{}", e[1]);
        }
        // Next minor, but a known key with a wrong value is still an error.
        let text = newer_text(Some(this.next_minor())).replace("role = \"controlplane\"", "role = \"router\"");
        let e = errors(&text);
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.role"), "{e:#?}");
        let e = errors(&valid_text().replace("version = 3", "plinth = \"one\"\nversion = 3"));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "plinth"), "{e:#?}");
    }

    #[test]
    fn releases() {
        assert_eq!(Release::try_from("0.1"), Ok(Release { major: 0, minor: 1 }));
        assert_eq!(Release::try_from("1.12.3"), Ok(Release { major: 1, minor: 12 }));
        for bad in ["", "1", "1.", ".1", "1.x", "1.2.3.4", "v1.2"] {
            assert!(Release::try_from(bad).is_err(), "{bad}");
        }
        assert_eq!(Release::this().to_string(), crate::VERSION.rsplit_once('.').unwrap().0);
        assert!(Release::this().next_minor() > Release::this());
    }

    #[test]
    fn cluster_ids_are_checked_and_derived_from_the_ca() {
        let (cert, _) = ca();
        let id = cluster_id_of_ca(&cert);
        assert_eq!((id.len(), id.starts_with("c-")), (26, true));
        assert_eq!(id, cluster_id_of_ca(&format!("{cert}\n")), "the same CA, the same id");
        assert_ne!(id, cluster_id_of_ca(&ca().0));
        let with = |id: &str| valid_text().replacen("[cluster]\n", &format!("[cluster]\nid = {id:?}\n"), 1);
        let c = MachineConfig::parse("node.toml", &with(&id)).unwrap();
        assert_eq!(c.cluster.id.as_deref(), Some(id.as_str()));
        let e = errors(&with("two words"));
        assert_eq!((e.len(), e[0].path.as_str()), (1, "cluster.id"), "{e:#?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = errors("version = 1\n[machine\nhostname = \"x\"\n");
        assert!(!e.is_empty());
        assert_eq!(e[0].line, 2);
    }

    #[test]
    fn missing_sections_and_bad_types() {
        let e = errors("version = \"one\"\n");
        let paths: Vec<&str> = e.iter().map(|d| d.path.as_str()).collect();
        assert!(
            paths.contains(&"version")
                && paths.contains(&"machine")
                && paths.contains(&"cluster")
                && paths.contains(&"api"),
            "{e:#?}"
        );
    }

    #[test]
    fn cidr_hints() {
        assert_eq!(parse_cidr("10.0.0.5", true).unwrap_err().1.as_deref(), Some("did you mean \"10.0.0.5/24\"?"));
        assert_eq!(
            parse_cidr("10.244.1.0/16", false).unwrap_err().1.as_deref(),
            Some("did you mean \"10.244.0.0/16\"?")
        );
        assert!(parse_cidr("10.0.0.5/24", true).is_ok());
    }

    #[test]
    fn endpoint_checks() {
        assert!(check_endpoint("https://10.0.0.5:6443").is_ok());
        assert!(check_endpoint("https://cp.example:6443/").is_ok());
        assert_eq!(
            check_endpoint("http://cp:6443").unwrap_err().1.as_deref(),
            Some("did you mean \"https://cp:6443\"?")
        );
        assert!(check_endpoint("https://cp").unwrap_err().0.contains("no port"));
    }

    #[test]
    fn hostnames() {
        assert!(Hostname::try_from("node-1.lan").is_ok());
        for bad in ["", "-a", "a-", "a_b", "a..b", &"x".repeat(64)] {
            assert!(Hostname::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_redacts_secrets_and_reboot_fields() {
        let a = MachineConfig::parse("a", &valid_text()).unwrap();
        let mut b = a.clone();
        b.version = 4;
        b.cluster.pod_cidr = "10.200.0.0/16".into();
        b.cluster.pod_network = PodNetwork::Vxlan;
        b.api.ca_key = Some("other".into());
        let d = diff(Some(&a), &b);
        assert!(d.contains("-version = 3") && d.contains("+version = 4"), "{d}");
        assert!(!d.contains("PRIVATE KEY"), "{d}");
        assert!(d.contains("(secret, sha256"), "{d}");
        // In a config of the one-CA form the machine API's CA key is the
        // Kubernetes CA's too, which the orchestrator reads at start.
        assert_eq!(reboot_required(&a, &b), vec!["cluster.pod_cidr", "cluster.pod_network", "cluster.ca_cert"]);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,400}") {
            let _ = MachineConfig::parse("fuzz.toml", &text);
        }

        #[test]
        fn parse_never_panics_on_mutated_valid_config(pos in 0usize..2000, byte in proptest::num::u8::ANY) {
            let mut bytes = valid_text().into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = MachineConfig::parse("fuzz.toml", &text);
            }
        }

        #[test]
        fn parse_never_panics_on_a_mutated_config_of_the_next_minor(pos in 0usize..2000, byte in proptest::num::u8::ANY) {
            // Unknown keys are dropped and the section decoded again.
            let mut bytes = newer_text(Some(Release::this().next_minor())).into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = MachineConfig::parse("fuzz.toml", &text);
            }
        }
    }

    #[test]
    fn tokens_are_bootstrap_tokens() {
        let t = generate_token().unwrap();
        assert!(is_bootstrap_token(&t), "{t}");
        assert_ne!(generate_token().unwrap(), t);
        for bad in ["0123456789abcdef0123", "ABCDEF.0123456789abcdef", "abcdef.0123", "abcdef.0123456789abcdef."] {
            assert!(!is_bootstrap_token(bad), "{bad}");
        }
    }
}
