//! `osctl gen`: the operator's keys, certificates and node configs.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use machinery::config::{
    Api, Cluster, Datastore, Interface, Machine, MachineConfig, Network, Role as NodeRole, Route, Services,
};
use machinery::pki::{self, CertKey};
use machinery::roles::Role;
use machinery::signing;

use crate::Failure;
use crate::clientconfig::{ClientConfig, Context};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum GenCommand {
    /// Config-signing key pair, cluster CA, admin client certificate and an
    /// osctlconfig that uses them.
    Keys {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Name of the cluster (the CA's common name and the context name).
        #[arg(long, default_value = "plinth")]
        cluster: String,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// A client certificate for another person or script.
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
    /// A node's machine config, with the cluster CA from `gen keys`.
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
        /// Directory holding ca.crt and ca.key from `gen keys`.
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

fn read_ca(dir: &Path) -> Result<CertKey, Failure> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p)
            .map_err(|e| Failure::Other(format!("reading {}: {e} (run `osctl gen keys` first)", p.display())))
    };
    Ok(CertKey { cert_pem: read("ca.crt")?, key_pem: read("ca.key")? })
}

pub fn run(cmd: GenCommand, fmt: Format) -> Result<(), Failure> {
    match cmd {
        GenCommand::Keys { out, cluster, force } => {
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
            let id = signing::key_id(&signing_key.verifying_key());
            match fmt {
                Format::Json => output::json(&serde_json::json!({"dir": out, "signing_key_id": id})),
                Format::Table => {
                    println!(
                        "wrote ops.key ops.pub ca.crt ca.key admin.crt admin.key osctlconfig to {}",
                        out.display()
                    );
                    println!("config-signing key: {id}");
                    println!("bake ops.pub into your images; keep ops.key and ca.key secret");
                }
            }
            Ok(())
        }
        GenCommand::Cert { name, role, ca_dir, out, valid_for } => {
            let ca = read_ca(&ca_dir)?;
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
            endpoint,
            token,
            cluster_id,
            secrets,
            config_version,
            out,
        } => {
            let ca = read_ca(&secrets)?;
            let token = match token {
                Some(t) => t,
                None => machinery::config::generate_token().map_err(other)?,
            };
            // A worker gets no CA key: its kubelet joins with the token and
            // pins the CA; apid serves a certificate issued here for its
            // name and static address.
            let (ca_key, cert, key) = match role {
                NodeRole::Controlplane => (Some(ca.key_pem.clone()), None, None),
                NodeRole::Worker => {
                    let mut names = vec![hostname.clone()];
                    names.extend(address.iter().filter_map(|a| a.split('/').next()).map(str::to_string));
                    let serving = pki::issue_server(&ca, &hostname, &names).map_err(other)?;
                    (None, Some(serving.cert_pem), Some(serving.key_pem))
                }
            };
            let mut network = Network::default();
            network.interfaces.push(Interface {
                name: interface.clone(),
                dhcp: address.is_none(),
                addresses: address.into_iter().collect(),
                mtu: None,
            });
            if let Some(gw) = gateway {
                network.routes.push(Route {
                    to: "0.0.0.0/0".into(),
                    via: gw,
                    interface: Some(interface),
                    metric: None,
                });
            }
            let config = MachineConfig {
                version: config_version,
                kind: machinery::config::KIND.into(),
                machine: Machine { hostname, ntp: vec![], network },
                cluster: Cluster {
                    name: cluster,
                    id: Some(cluster_id.unwrap_or_else(|| machinery::config::cluster_id_of_ca(&ca.cert_pem))),
                    role,
                    endpoint,
                    datastore: Datastore::default(),
                    pod_cidr: "10.244.0.0/16".into(),
                    service_cidr: "10.96.0.0/12".into(),
                    token: Some(token),
                },
                api: Api {
                    ca_cert: ca.cert_pem,
                    ca_key,
                    cert,
                    key,
                    cert_sans: vec![],
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

    fn gen_config(dir: &Path, role: &str, out: &Path) {
        let config = GenCommand::Config {
            cluster: "demo".into(),
            role: parse_role(role).unwrap(),
            hostname: format!("{role}-1"),
            address: Some("10.0.0.7/24".into()),
            gateway: None,
            interface: "eth0".into(),
            endpoint: Some("https://10.0.0.5:6443".into()),
            token: None,
            cluster_id: None,
            secrets: dir.into(),
            config_version: 1,
            out: Some(out.into()),
        };
        run(config, Format::Table).unwrap();
    }

    #[test]
    fn a_worker_config_joins_by_token_and_carries_no_ca_key() {
        let d = tempfile::tempdir().unwrap();
        run(GenCommand::Keys { out: d.path().into(), cluster: "demo".into(), force: false }, Format::Table).unwrap();
        let (worker, cp) = (d.path().join("worker.toml"), d.path().join("cp.toml"));
        gen_config(d.path(), "worker", &worker);
        gen_config(d.path(), "controlplane", &cp);
        let w = MachineConfig::parse("worker.toml", &std::fs::read_to_string(&worker).unwrap()).unwrap();
        assert!(w.api.ca_key.is_none(), "no CA key on a worker");
        assert!(machinery::config::is_bootstrap_token(w.cluster.token.as_deref().unwrap()));
        let serving = pki::cert_info(w.api.cert.as_deref().unwrap()).unwrap();
        assert_eq!(serving.common_name, "worker-1", "apid's serving certificate, issued here");
        let c = MachineConfig::parse("cp.toml", &std::fs::read_to_string(&cp).unwrap()).unwrap();
        assert!(c.api.ca_key.is_some(), "the control plane keeps the CA key");
    }
}
