//! `osctl gen`: the operator's keys, certificates and node configs.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use machinery::config::{
    Api, Cluster, Datastore, Interface, Machine, MachineConfig, Network, Release, Role as NodeRole, Route, Services,
};
use machinery::pki::{self, CertKey};
use machinery::roles::Role;
use machinery::signing;

use crate::Failure;
use crate::clientconfig::{ClientConfig, Context};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum GenCommand {
    /// Config-signing key pair, machine-API CA, admin client certificate,
    /// an osctlconfig that uses them, and the Kubernetes CA.
    Keys(KeysOut),
    /// The Kubernetes CA alone (kube-ca.crt, kube-ca.key): for secrets made
    /// before the machine API and Kubernetes had separate CAs.
    KubeCa(KeysOut),
    /// A machine-API client certificate for another person or script.
    Cert {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lifetime, e.g. 30d or 1y.
        #[arg(long, default_value = "1y")]
        valid_for: humantime::Duration,
    },
    /// A node's machine config, with the CAs from `gen keys`: a control
    /// plane gets both CA keys, a worker none (apid's serving certificate
    /// instead, issued here).
    Config {
        #[arg(long)]
        cluster: String,
        #[arg(long, value_parser = parse_role)]
        role: NodeRole,
        #[arg(long)]
        hostname: String,
        /// Static address in CIDR form on the interface; DHCP when absent.
        #[arg(long)]
        address: Option<String>,
        /// Default gateway (with --address).
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long, default_value = "eth0")]
        interface: String,
        /// A static address in CIDR form on a second interface, the
        /// network the nodes reach each other on (their Node InternalIP;
        /// a worker's --endpoint is on it).
        #[arg(long, value_name = "CIDR")]
        cluster_address: Option<String>,
        /// The interface of --cluster-address.
        #[arg(long, default_value = "eth1")]
        cluster_interface: String,
        /// The control plane's Kubernetes API URL (required for workers).
        #[arg(long)]
        endpoint: Option<String>,
        /// Bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` (default: a new random one).
        #[arg(long)]
        token: Option<String>,
        /// The cluster's identity (default: derived from the cluster CA,
        /// the same for every config made from these secrets).
        #[arg(long)]
        cluster_id: Option<String>,
        /// Another name or address for apid's serving certificate (repeatable).
        #[arg(long = "cert-san", value_name = "NAME")]
        cert_sans: Vec<String>,
        /// Directory holding ca.crt, ca.key, kube-ca.crt and kube-ca.key from `gen keys`.
        #[arg(long, default_value = ".")]
        secrets: PathBuf,
        /// The config's `version` (raise it for every change).
        #[arg(long, default_value_t = 1)]
        config_version: u64,
        /// File to write (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where `gen keys` and `gen kube-ca` write, and for which cluster.
#[derive(clap::Args, Debug)]
pub struct KeysOut {
    /// Directory to write into.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Name of the cluster (the CAs' common names and the context name).
    #[arg(long, default_value = "plinth")]
    pub cluster: String,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

fn parse_role(s: &str) -> Result<NodeRole, String> {
    match s {
        "controlplane" => Ok(NodeRole::Controlplane),
        "worker" => Ok(NodeRole::Worker),
        _ => Err(format!("unknown role {s:?}: expected controlplane or worker")),
    }
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

/// Writes a file, refusing to replace one unless forced; private files
/// are created readable by their owner only.
fn write(path: &Path, content: &str, private: bool, force: bool) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(if private { 0o600 } else { 0o644 });
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Failure::Other(format!("{} exists: pass --force to replace it", path.display()))
        }
        _ => Failure::Other(format!("writing {}: {e}", path.display())),
    })?;
    f.write_all(content.as_bytes()).map_err(|e| Failure::Other(format!("writing {}: {e}", path.display())))
}

/// The machine-API CA's files (osctl ↔ apid).
const MACHINE_CA: (&str, &str) = ("ca.crt", "ca.key");
/// The Kubernetes CA's files (API server, kubelets, kubectl).
const KUBE_CA: (&str, &str) = ("kube-ca.crt", "kube-ca.key");

fn read_secret(dir: &Path, name: &str) -> Result<String, Failure> {
    let p = dir.join(name);
    let fix = if name.starts_with("kube-ca") {
        format!("run `osctl gen kube-ca --out {}` to add the Kubernetes CA to older secrets", dir.display())
    } else {
        "run `osctl gen keys` first".into()
    };
    std::fs::read_to_string(&p).map_err(|e| Failure::Other(format!("reading {}: {e} ({fix})", p.display())))
}

fn read_ca(dir: &Path, (cert, key): (&str, &str)) -> Result<CertKey, Failure> {
    Ok(CertKey { cert_pem: read_secret(dir, cert)?, key_pem: read_secret(dir, key)? })
}

/// Makes the Kubernetes CA and writes it into `out`.
fn write_kube_ca(out: &Path, cluster: &str, force: bool) -> Result<(), Failure> {
    let ca = pki::generate_ca(&format!("{cluster} kubernetes")).map_err(other)?;
    write(&out.join(KUBE_CA.0), &ca.cert_pem, false, force)?;
    write(&out.join(KUBE_CA.1), &ca.key_pem, true, force)
}

pub fn run(cmd: GenCommand, fmt: Format) -> Result<(), Failure> {
    match cmd {
        GenCommand::Keys(KeysOut { out, cluster, force }) => {
            std::fs::create_dir_all(&out).map_err(|e| other(format!("creating {}: {e}", out.display())))?;
            let signing_key = signing::generate_signing_key().map_err(other)?;
            let ca = pki::generate_ca(&cluster).map_err(other)?;
            let admin = pki::issue_client(&ca, "admin", Role::Admin, pki::LEAF_LIFETIME).map_err(other)?;
            let files: [(&str, String, bool); 6] = [
                ("ops.key", signing::signing_key_to_pem(&signing_key).map_err(other)?, true),
                ("ops.pub", signing::verifying_key_to_pem(&signing_key.verifying_key()).map_err(other)?, false),
                ("ca.crt", ca.cert_pem.clone(), false),
                ("ca.key", ca.key_pem.clone(), true),
                ("admin.crt", admin.cert_pem, false),
                ("admin.key", admin.key_pem, true),
            ];
            let mut cfg = ClientConfig { context: cluster.clone(), ..Default::default() };
            cfg.contexts.insert(
                cluster.clone(),
                Context {
                    ca: Some("ca.crt".into()),
                    crt: Some("admin.crt".into()),
                    key: Some("admin.key".into()),
                    signing_key: Some("ops.key".into()),
                    ..Default::default()
                },
            );
            for (name, content, private) in &files {
                write(&out.join(name), content, *private, force)?;
            }
            write(&out.join("osctlconfig"), &cfg.to_toml(), false, force)?;
            write_kube_ca(&out, &cluster, force)?;
            let id = signing::key_id(&signing_key.verifying_key());
            match fmt {
                Format::Json => output::json(&serde_json::json!({"dir": out, "signing_key_id": id})),
                Format::Table => {
                    println!(
                        "wrote ops.key ops.pub ca.crt ca.key admin.crt admin.key osctlconfig kube-ca.crt kube-ca.key to {}",
                        out.display()
                    );
                    println!("config-signing key: {id}");
                    println!("bake ops.pub into your images; keep ops.key, ca.key and kube-ca.key secret");
                }
            }
            Ok(())
        }
        GenCommand::KubeCa(KeysOut { out, cluster, force }) => {
            std::fs::create_dir_all(&out).map_err(|e| other(format!("creating {}: {e}", out.display())))?;
            write_kube_ca(&out, &cluster, force)?;
            println!("wrote kube-ca.crt kube-ca.key to {}: run `osctl gen config` again for each node", out.display());
            Ok(())
        }
        GenCommand::Cert { name, role, ca_dir, out, valid_for } => {
            let ca = read_ca(&ca_dir, MACHINE_CA)?;
            let c = pki::issue_client(&ca, &name, role, *valid_for).map_err(other)?;
            write(&out.join(format!("{name}.crt")), &c.cert_pem, false, false)?;
            write(&out.join(format!("{name}.key")), &c.key_pem, true, false)?;
            println!("wrote {name}.crt and {name}.key (role {role}) to {}", out.display());
            Ok(())
        }
        GenCommand::Config {
            cluster,
            role,
            hostname,
            address,
            gateway,
            interface,
            cluster_address,
            cluster_interface,
            endpoint,
            token,
            cluster_id,
            cert_sans,
            secrets,
            config_version,
            out,
        } => {
            let ca = read_ca(&secrets, MACHINE_CA)?;
            let kube_ca_cert = read_secret(&secrets, KUBE_CA.0)?;
            let token = match token {
                Some(t) => t,
                None => machinery::config::generate_token().map_err(other)?,
            };
            // A worker gets no CA key: its kubelet joins with the token and
            // pins the Kubernetes CA; apid serves a certificate issued here
            // for its name, static address and the SANs given.
            let (ca_key, kube_ca_key, cert, key) = match role {
                NodeRole::Controlplane => {
                    (Some(ca.key_pem.clone()), Some(read_secret(&secrets, KUBE_CA.1)?), None, None)
                }
                NodeRole::Worker => {
                    let mut names = vec![hostname.clone()];
                    names.extend(
                        address.iter().chain(&cluster_address).filter_map(|a| a.split('/').next()).map(str::to_string),
                    );
                    names.extend(cert_sans.iter().cloned());
                    let serving = pki::issue_server(&ca, &hostname, &names, pki::LEAF_LIFETIME).map_err(other)?;
                    (None, None, Some(serving.cert_pem), Some(serving.key_pem))
                }
            };
            let mut network = Network::default();
            network.interfaces.push(Interface {
                name: interface.clone(),
                dhcp: address.is_none(),
                addresses: address.into_iter().collect(),
                mtu: None,
            });
            if let Some(a) = cluster_address {
                network.interfaces.push(Interface {
                    name: cluster_interface,
                    dhcp: false,
                    addresses: vec![a],
                    mtu: None,
                });
            }
            if let Some(gw) = gateway {
                network.routes.push(Route {
                    to: "0.0.0.0/0".into(),
                    via: gw,
                    interface: Some(interface),
                    metric: None,
                });
            }
            let config = MachineConfig {
                plinth: Some(Release::this().to_string()),
                version: config_version,
                kind: machinery::config::KIND.into(),
                machine: Machine { hostname, ntp: vec![], network },
                cluster: Cluster {
                    name: cluster,
                    id: Some(cluster_id.unwrap_or_else(|| machinery::config::cluster_id_of_ca(&ca.cert_pem))),
                    role,
                    endpoint,
                    endpoints: Vec::new(),
                    datastore: Datastore::default(),
                    etcd_bootstrap: false,
                    pod_cidr: "10.244.0.0/16".into(),
                    service_cidr: "10.96.0.0/12".into(),
                    pod_network: Default::default(),
                    token: Some(token),
                    ca_cert: Some(kube_ca_cert),
                    ca_key: kube_ca_key,
                },
                api: Api {
                    ca_cert: ca.cert_pem,
                    ca_key,
                    cert,
                    key,
                    cert_sans,
                    port: machinery::config::DEFAULT_API_PORT,
                },
                services: Services::default(),
            };
            let text = config.to_toml();
            // What we write must be what a node accepts.
            MachineConfig::parse("generated config", &text).map_err(|d| Failure::Invalid(d.to_string()))?;
            match out {
                Some(path) => {
                    write(&path, &text, true, true)?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_out(dir: &Path) -> KeysOut {
        KeysOut { out: dir.into(), cluster: "demo".into(), force: false }
    }

    fn gen_config(dir: &Path, role: &str, out: &Path) {
        let config = GenCommand::Config {
            cluster: "demo".into(),
            role: parse_role(role).unwrap(),
            hostname: format!("{role}-1"),
            address: Some("10.0.0.7/24".into()),
            gateway: None,
            interface: "eth0".into(),
            cluster_address: Some("10.5.0.7/24".into()),
            cluster_interface: "eth1".into(),
            endpoint: Some("https://10.0.0.5:6443".into()),
            token: None,
            cluster_id: None,
            cert_sans: vec!["w1.example".into()],
            secrets: dir.into(),
            config_version: 1,
            out: Some(out.into()),
        };
        run(config, Format::Table).unwrap();
    }

    #[test]
    fn a_worker_config_joins_by_token_and_carries_no_ca_key() {
        let d = tempfile::tempdir().unwrap();
        run(GenCommand::Keys(keys_out(d.path())), Format::Table).unwrap();
        let (worker, cp) = (d.path().join("worker.toml"), d.path().join("cp.toml"));
        gen_config(d.path(), "worker", &worker);
        gen_config(d.path(), "controlplane", &cp);
        let worker_text = std::fs::read_to_string(&worker).unwrap();
        // No CA's private key of any kind; apid's own serving key only.
        assert_eq!(worker_text.matches("PRIVATE KEY-----").count(), 2, "one BEGIN/END pair: api.key\n{worker_text}");
        let w = MachineConfig::parse("worker.toml", &worker_text).unwrap();
        assert!(w.api.ca_key.is_none() && w.cluster.ca_key.is_none(), "no CA key on a worker");
        let apid_key = w.api.key.as_deref().unwrap();
        for ca_key in ["ca.key", "kube-ca.key"] {
            let k = std::fs::read_to_string(d.path().join(ca_key)).unwrap();
            assert!(!worker_text.contains(k.trim()), "{ca_key} is in the worker's config");
            assert_ne!(k.trim(), apid_key.trim());
        }
        assert!(machinery::config::is_bootstrap_token(w.cluster.token.as_deref().unwrap()));
        let serving = pki::cert_info(w.api.cert.as_deref().unwrap()).unwrap();
        assert_eq!(serving.common_name, "worker-1", "apid's serving certificate, issued here");
        let machine_ca = std::fs::read_to_string(d.path().join("ca.crt")).unwrap();
        assert_eq!(serving.issuer, pki::cert_info(&machine_ca).unwrap().subject, "by the machine-API CA");
        assert_eq!(w.api.cert_sans, ["w1.example"]);
        // Its address on the cluster network, on a second interface.
        let eth1 = &w.machine.network.interfaces[1];
        assert_eq!(
            (eth1.name.as_str(), eth1.dhcp, &eth1.addresses[..]),
            ("eth1", false, &["10.5.0.7/24".to_string()][..])
        );
        // The worker pins the Kubernetes CA, not the machine API's.
        let kube_ca = std::fs::read_to_string(d.path().join("kube-ca.crt")).unwrap();
        assert_eq!((w.kube_ca().cert_pem, w.kube_ca().field), (kube_ca.as_str(), "cluster.ca_cert"));
        assert_ne!(pki::ca_pin(&kube_ca).unwrap(), pki::ca_pin(&machine_ca).unwrap());

        let c = MachineConfig::parse("cp.toml", &std::fs::read_to_string(&cp).unwrap()).unwrap();
        assert!(c.api.ca_key.is_some(), "the control plane keeps the machine-API CA key");
        assert_eq!(
            c.kube_ca().key_pem.map(str::trim),
            Some(std::fs::read_to_string(d.path().join("kube-ca.key")).unwrap().trim())
        );
        assert_eq!(c.plinth.as_deref(), Some(Release::this().to_string().as_str()), "the release it was written for");
        // The same cluster identity as before the split: of the machine-API CA.
        assert_eq!(c.cluster.id, Some(machinery::config::cluster_id_of_ca(&machine_ca)));
    }

    #[test]
    fn secrets_made_before_the_kubernetes_ca_get_it_from_gen_kube_ca() {
        let d = tempfile::tempdir().unwrap();
        run(GenCommand::Keys(keys_out(d.path())), Format::Table).unwrap();
        std::fs::remove_file(d.path().join("kube-ca.crt")).unwrap();
        std::fs::remove_file(d.path().join("kube-ca.key")).unwrap();
        let cp = d.path().join("cp.toml");
        let config = |out: &Path| GenCommand::Config {
            cluster: "demo".into(),
            role: NodeRole::Controlplane,
            hostname: "cp-1".into(),
            address: None,
            gateway: None,
            interface: "eth0".into(),
            cluster_address: None,
            cluster_interface: "eth1".into(),
            endpoint: None,
            token: None,
            cluster_id: None,
            cert_sans: vec![],
            secrets: d.path().into(),
            config_version: 1,
            out: Some(out.into()),
        };
        let Err(Failure::Other(e)) = run(config(&cp), Format::Table) else { panic!("no kube-ca.crt, no config") };
        assert!(e.contains("kube-ca.crt") && e.contains("osctl gen kube-ca"), "{e}");
        run(GenCommand::KubeCa(keys_out(d.path())), Format::Table).unwrap();
        let again = run(GenCommand::KubeCa(keys_out(d.path())), Format::Table);
        assert!(matches!(again, Err(Failure::Other(e)) if e.contains("--force")), "never replaced silently");
        run(config(&cp), Format::Table).unwrap();
        let c = MachineConfig::parse("cp.toml", &std::fs::read_to_string(&cp).unwrap()).unwrap();
        assert_eq!(c.kube_ca().field, "cluster.ca_cert");
    }
}
