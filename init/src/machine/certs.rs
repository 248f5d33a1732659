//! `Certificates`: every certificate Plinth issues on the node, with its
//! expiry. init knows where each lives: the two CAs and apid's serving
//! certificate are its own (the config, what it last issued to apid); the
//! orchestrator's — the API server's and the kubelet's serving
//! certificates, the admin kubeconfig `osctl kubeconfig` hands out, a
//! joined kubelet's client certificate — come from `orchestrator certs`,
//! which reads the serving ones from a TLS handshake (they live in memory);
//! an etcd member's comes from its file (init issues and renews it).

use machinery::api;
use machinery::config::{self, MachineConfig};

use super::{Machine, ORCHESTRATOR};

/// The kubelet's listen address (`orchestrator kubelet --listen`'s default).
const KUBELET_LISTEN: &str = "0.0.0.0:10250";

/// One row from a PEM certificate, or the reason it could not be read.
fn row(name: &str, pem: Result<&str, String>, renewed: bool) -> api::Certificate {
    let info = pem.and_then(|p| machinery::pki::cert_info(p).map_err(|e| e.to_string()));
    match info {
        Ok(i) => api::Certificate {
            name: name.into(),
            subject: i.subject,
            issuer: i.issuer,
            not_before: i.not_before,
            not_after: i.not_after,
            renewed,
            error: String::new(),
        },
        Err(error) => api::Certificate { name: name.into(), renewed, error, ..Default::default() },
    }
}

/// What `orchestrator certs` prints: a name with a PEM or an error.
#[derive(serde::Deserialize)]
struct Found {
    name: String,
    pem: Option<String>,
    error: Option<String>,
}

/// The rows of the config's CAs and apid's serving certificate.
fn own(c: &MachineConfig, apid_cert: Option<&str>) -> Vec<api::Certificate> {
    let split = c.cluster.ca_cert.is_some();
    let mut rows =
        vec![row(if split { "machine API CA" } else { "machine API and Kubernetes CA" }, Ok(&c.api.ca_cert), false)];
    // A certificate the config carries is the operator's to renew.
    let issued_here = c.api.cert.is_none();
    let apid = apid_cert.or(c.api.cert.as_deref()).ok_or_else(|| "apid has not asked for its certificate yet".into());
    rows.push(row("apid (serving)", apid, issued_here));
    if split {
        rows.push(row("Kubernetes CA", Ok(c.kube_ca().cert_pem), false));
    }
    rows
}

impl Machine {
    /// Every certificate's row, in the order `osctl certs` shows them.
    pub(super) async fn certificates(&self) -> Vec<api::Certificate> {
        let (config, apid) = {
            let st = self.state.lock().await;
            (st.active.as_ref().map(|a| a.config.clone()), self.apid_cert.lock().await.clone())
        };
        let Some(c) = config else {
            // Safe mode: only what apid serves is known.
            return vec![row("apid (serving)", apid.as_deref().ok_or_else(|| "no config".into()), false)];
        };
        let mut rows = own(&c, apid.as_deref());
        // The etcd member's (peer, client, and the orchestrator's etcd
        // client certificate), which init renews (`renew_etcd_certs`).
        let etcd = self.settings.orchestrator.as_ref().and_then(|o| o.etcd.as_ref());
        if let Some(e) = etcd.filter(|_| super::etcd::plan(&c).is_some() && self.supervises(super::etcd::ETCD)) {
            let path = super::etcd::Files::under(&e.dir).cert;
            let pem = std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()));
            rows.push(row("etcd member (peer, client)", pem.as_deref().map_err(Clone::clone), true));
        }
        let Some(o) = self.settings.orchestrator.as_ref().filter(|_| self.supervises(ORCHESTRATOR)) else {
            return rows;
        };
        let mut cmd = std::process::Command::new(&o.program);
        cmd.arg("certs").arg("--data-dir").arg(&o.data_dir);
        if c.cluster.role == config::Role::Controlplane {
            cmd.args(["--api", &o.listen]);
        }
        if o.kubelet.is_some() {
            cmd.args(["--kubelet", KUBELET_LISTEN]);
        }
        let found: Result<Vec<Found>, String> = match crate::supervisor::output(cmd).await {
            Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{} certs printed no list: {e}", o.program.display())),
            Ok(out) => Err(format!("{} certs: {}", o.program.display(), String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => Err(format!("{}: {e}", o.program.display())),
        };
        match found {
            Ok(found) => rows.extend(found.into_iter().map(|f| {
                let pem = f.pem.ok_or_else(|| f.error.unwrap_or_default());
                row(&f.name, pem.as_deref().map_err(Clone::clone), true)
            })),
            Err(e) => rows.push(row("orchestrator", Err(e), true)),
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use machinery::pki;

    fn config(split: bool) -> machinery::config::MachineConfig {
        let ca = pki::generate_ca("machine").unwrap();
        let text = format!(
            "version = 1\n[machine]\nhostname = \"n1\"\n[cluster]\nname = \"demo\"\nrole = \"controlplane\"\n\
             [api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
            ca.cert_pem, ca.key_pem
        );
        let mut c = machinery::config::MachineConfig::parse("node.toml", &text).unwrap();
        if split {
            let kube = pki::generate_ca("kube").unwrap();
            (c.cluster.ca_cert, c.cluster.ca_key) = (Some(kube.cert_pem), Some(kube.key_pem));
        }
        c
    }

    #[test]
    fn the_cas_are_not_renewed_and_apids_certificate_is_when_init_issues_it() {
        let c = config(true);
        let ca = pki::CertKey { cert_pem: c.api.ca_cert.clone(), key_pem: c.api.ca_key.clone().unwrap() };
        let issued = pki::issue_server(&ca, "n1", &["n1".into()], std::time::Duration::from_secs(60)).unwrap();
        let rows = super::own(&c, Some(&issued.cert_pem));
        let names: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.renewed)).collect();
        assert_eq!(names, [("machine API CA", false), ("apid (serving)", true), ("Kubernetes CA", false)]);
        let apid = &rows[1];
        assert!(apid.error.is_empty(), "{apid:?}");
        assert_eq!(apid.issuer, rows[0].subject);
        assert!(apid.not_after - apid.not_before <= 60 + 300, "its lifetime, backdated at most 5 min: {apid:?}");
    }

    #[test]
    fn a_certificate_the_config_carries_is_not_renewed_and_one_ca_is_one_row() {
        let c = config(false);
        let ca = pki::CertKey { cert_pem: c.api.ca_cert.clone(), key_pem: c.api.ca_key.clone().unwrap() };
        let carried = pki::issue_server(&ca, "n1", &["n1".into()], std::time::Duration::from_secs(600)).unwrap();
        let mut c = c;
        (c.api.cert, c.api.key, c.api.ca_key) = (Some(carried.cert_pem), Some(carried.key_pem), None);
        let rows = super::own(&c, None);
        let names: Vec<_> = rows.iter().map(|r| (r.name.as_str(), r.renewed)).collect();
        assert_eq!(names, [("machine API and Kubernetes CA", false), ("apid (serving)", false)]);
        assert!(rows[1].error.is_empty());
        let bad = super::row("x", Err("gone".into()), true);
        assert_eq!((bad.error.as_str(), bad.not_after), ("gone", 0));
    }
}
