//! CertificateSigningRequests: the approver (upstream's csrapproving for
//! kubelet client certificates) and the signer (csrsigning) with the
//! cluster CA, in one task that the binary starts with the CA's key; the
//! same task runs the bootstrap-token cleaner every 2 s (the shared
//! controllers' periodic pass waits for a quiet store, which a busy
//! cluster never has).
//!
//! Approved automatically, for `kubernetes.io/kube-apiserver-client-kubelet`
//! only: a bootstrap-token user (`system:bootstrappers`) asking for
//! `system:node:<name>` while no Ready Node of that name exists (a live
//! Node's name is taken: the request is Denied, saying so), and a node
//! (`system:nodes`) renewing its own certificate. Upstream asks RBAC
//! whether the requester may create `certificatesigningrequests/nodeclient`
//! or `/selfnodeclient`; the bootstrap policy binds exactly these groups
//! to those roles, so the groups decide here.
//!
//! Approved automatically for `kubernetes.io/kubelet-serving` (which
//! upstream leaves to an external approver): a node (`system:node:<n>` in
//! `system:nodes`) asking for a certificate for itself whose DNS names are
//! its Node's name or DNS addresses and whose IPs are its Node's addresses.
//! The certificate carries those names. Anything else waits for
//! `kubectl certificate approve`.
//!
//! A kubelet request (either signer) for `system:node:<name>` is owned by
//! the Node `<name>` once that Node exists (an ownerReference to it), so
//! the garbage collector deletes a node's requests with its Node: a node
//! that leaves the cluster (`osctl reset` deletes its Node) leaves no
//! request behind, and a node joining again under the name starts clean.
//! A request whose Node is not there yet (a join in progress) keeps no
//! owner and stays.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use orchestrator_apimachinery::bootstrap_token::GROUP as BOOTSTRAPPERS;
use orchestrator_apimachinery::certificates::{
    CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, NODE_USER_PREFIX, NODES_GROUP, Request,
    kubelet_client_problem, kubelet_serving_problem, parse_request,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry};

use crate::{list_typed, modify_typed, name, time_now, uid};

/// The cluster CA and how long the certificates it signs live.
#[derive(Clone)]
pub struct Signer {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// Upstream's `--cluster-signing-duration` (a year by default).
    pub lifetime: Duration,
}

/// Upstream backdates a certificate by five minutes (clock skew); a
/// short test lifetime is backdated by a tenth of it, so that 70–90 % of
/// the whole validity still falls after the issue.
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

#[derive(Debug, PartialEq)]
enum Decision {
    Approve(&'static str),
    Deny(String),
    /// Not ours to decide: left for a person.
    Leave,
}

fn spec(c: &CertificateSigningRequest) -> (&str, &[String]) {
    (c.spec.username.as_deref().unwrap_or_default(), c.spec.groups.as_deref().unwrap_or_default())
}

fn has_condition(c: &CertificateSigningRequest, ty: &str) -> bool {
    c.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|x| x.type_ == ty))
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn decide(c: &CertificateSigningRequest, nodes: &[Node]) -> Decision {
    let Ok(request) = parse_request(&c.spec.request.0) else { return Decision::Leave };
    let usages = c.spec.usages.clone().unwrap_or_default();
    match c.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER if kubelet_client_problem(&request, &usages).is_none() => {
            decide_client(c, &request, nodes)
        }
        KUBELET_SERVING_SIGNER if kubelet_serving_problem(&request, &usages).is_none() => {
            decide_serving(c, &request, nodes)
        }
        _ => Decision::Leave,
    }
}

/// A node's own serving certificate: requested by that node, naming only
/// its Node's name and addresses (left pending until its Node is there).
fn decide_serving(c: &CertificateSigningRequest, request: &Request, nodes: &[Node]) -> Decision {
    let (user, groups) = spec(c);
    if user != request.common_name || !groups.iter().any(|g| g == NODES_GROUP) {
        return Decision::Leave;
    }
    let node = request.common_name.trim_start_matches(NODE_USER_PREFIX);
    let Some(n) = nodes.iter().find(|n| name(&n.metadata) == node) else { return Decision::Leave };
    let addresses = n.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
    let has =
        |types: &[&str], value: &str| addresses.iter().any(|a| types.contains(&a.type_.as_str()) && a.address == value);
    let own_dns = |d: &String| d == node || has(&["Hostname", "InternalDNS", "ExternalDNS"], d);
    let own_ip = |ip: &String| has(&["InternalIP", "ExternalIP"], ip);
    if request.dns_names.iter().all(own_dns) && request.ips.iter().all(own_ip) {
        return Decision::Approve(
            "Auto approving kubelet serving certificate: the node asks for its own names and addresses.",
        );
    }
    Decision::Leave
}

fn decide_client(c: &CertificateSigningRequest, request: &Request, nodes: &[Node]) -> Decision {
    let node = request.common_name.trim_start_matches(NODE_USER_PREFIX);
    let (user, groups) = spec(c);
    if user == request.common_name && groups.iter().any(|g| g == NODES_GROUP) {
        return Decision::Approve("Auto approving self kubelet client certificate after SubjectAccessReview.");
    }
    if groups.iter().any(|g| g == BOOTSTRAPPERS) {
        if nodes.iter().any(|n| name(&n.metadata) == node && node_ready(n)) {
            return Decision::Deny(format!(
                "node name {node:?} is taken: a Node of that name is Ready; delete it (kubectl delete node {node}) or join under another name"
            ));
        }
        return Decision::Approve("Auto approving kubelet client certificate after SubjectAccessReview.");
    }
    Decision::Leave
}

fn condition(ty: &str, reason: &str, message: &str) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(time_now()),
        last_transition_time: Some(time_now()),
    }
}

fn add_condition(reg: &Registry, csr: &str, c: CertificateSigningRequestCondition) -> Result<(), ApiError> {
    modify_typed(reg, None, csr, Part::Status, |o: &mut CertificateSigningRequest| {
        if has_condition(o, &c.type_) {
            return false;
        }
        o.status.get_or_insert_default().conditions.get_or_insert_default().push(c.clone());
        true
    })
}

/// Issues the certificate of an approved request, from the CSR's public
/// key and subject, with the usages it asked for (and its names, for the
/// kubelet-serving signer only).
fn sign(signer: &Signer, c: &CertificateSigningRequest) -> Result<String, String> {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
    let pem = String::from_utf8(c.spec.request.0.clone()).map_err(|_| "the request is not PEM text".to_string())?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| e.to_string())?;
    let mut lifetime = signer.lifetime;
    if let Some(s) = c.spec.expiration_seconds.and_then(|s| u64::try_from(s).ok()) {
        lifetime = lifetime.min(Duration::from_secs(s));
    }
    let now = time::OffsetDateTime::now_utc();
    let p = &mut csr.params;
    p.not_before = now - backdate(lifetime);
    p.not_after = now + lifetime;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    if c.spec.signer_name != KUBELET_SERVING_SIGNER {
        p.subject_alt_names.clear();
    }
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| e.to_string())?;
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.key_usages.clear();
    p.extended_key_usages.clear();
    for u in c.spec.usages.iter().flatten() {
        match u.as_str() {
            "digital signature" => p.key_usages.push(Ku::DigitalSignature),
            "key encipherment" => p.key_usages.push(Ku::KeyEncipherment),
            "client auth" => p.extended_key_usages.push(Eku::ClientAuth),
            "server auth" => p.extended_key_usages.push(Eku::ServerAuth),
            other => return Err(format!("usage {other:?} is not one this signer grants")),
        }
    }
    let key = rcgen::KeyPair::from_pem(&signer.ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&signer.ca_cert_pem, key).map_err(|e| format!("the CA certificate: {e}"))?;
    Ok(csr.signed_by(&issuer).map_err(|e| e.to_string())?.pem())
}

/// The Node a kubelet request (client or serving) is for, when that Node
/// exists: the name in `system:node:<name>`, the request's subject.
fn node_of<'a>(c: &CertificateSigningRequest, nodes: &'a [Node]) -> Option<&'a Node> {
    if ![KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER].contains(&c.spec.signer_name.as_str()) {
        return None;
    }
    let request = parse_request(&c.spec.request.0).ok()?;
    let node = request.common_name.strip_prefix(NODE_USER_PREFIX)?;
    nodes.iter().find(|n| name(&n.metadata) == node && !uid(&n.metadata).is_empty())
}

/// Makes each kubelet request a dependent of its Node (see the module's
/// documentation), once.
fn own_by_nodes(reg: &Registry, csrs: &[CertificateSigningRequest], nodes: &[Node]) -> Result<(), ApiError> {
    for c in csrs {
        let Some(n) = node_of(c, nodes) else { continue };
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name(&n.metadata).to_string(),
            uid: uid(&n.metadata).to_string(),
            ..Default::default()
        };
        let owned =
            |c: &CertificateSigningRequest| c.metadata.owner_references.iter().flatten().any(|r| r.uid == owner.uid);
        if owned(c) {
            continue;
        }
        modify_typed(reg, None, name(&c.metadata), Part::Main, |o: &mut CertificateSigningRequest| {
            if owned(o) {
                return false;
            }
            o.metadata.owner_references.get_or_insert_default().push(owner.clone());
            true
        })?;
        tracing::info!(csr = name(&c.metadata), node = owner.name, "owned by its Node");
    }
    Ok(())
}

/// One pass: decide pending kubelet requests, sign approved ones, and
/// make kubelet requests dependents of their Nodes.
pub fn reconcile(reg: &Registry, signer: &Signer) -> Result<(), ApiError> {
    let csrs: Vec<CertificateSigningRequest> = list_typed(reg)?;
    if csrs.is_empty() {
        return Ok(());
    }
    let nodes: Vec<Node> = list_typed(reg)?;
    own_by_nodes(reg, &csrs, &nodes)?;
    for c in &csrs {
        let csr = name(&c.metadata);
        let decided = has_condition(c, "Approved") || has_condition(c, "Denied");
        if !decided {
            match decide(c, &nodes) {
                Decision::Approve(message) => {
                    add_condition(reg, csr, condition("Approved", "AutoApproved", message))?;
                    tracing::info!(csr, "approved");
                }
                Decision::Deny(message) => {
                    tracing::warn!(csr, "denied: {message}");
                    add_condition(reg, csr, condition("Denied", "NodeNameTaken", &message))?;
                }
                Decision::Leave => {}
            }
            continue;
        }
        let issued = c.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|b| !b.0.is_empty());
        let ours =
            [KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, CLIENT_SIGNER].contains(&c.spec.signer_name.as_str());
        if !has_condition(c, "Approved") || has_condition(c, "Denied") || has_condition(c, "Failed") || issued || !ours
        {
            continue;
        }
        match sign(signer, c) {
            Ok(cert) => modify_typed(reg, None, csr, Part::Status, |o: &mut CertificateSigningRequest| {
                let s = o.status.get_or_insert_default();
                if s.certificate.is_some() {
                    return false;
                }
                s.certificate = Some(ByteString(cert.clone().into_bytes()));
                true
            })?,
            Err(e) => {
                tracing::warn!(csr, "signing failed: {e}");
                add_condition(reg, csr, condition("Failed", "SignerValidationFailure", &e))?;
            }
        }
    }
    Ok(())
}

/// Runs the token cleaner and [`reconcile`] on every change to a CSR, and every 2 s.
pub fn spawn(reg: Arc<Registry>, signer: Signer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut watch = crate::watch_from_now(&reg, "certificates").await;
            loop {
                let (r, s) = (reg.clone(), signer.clone());
                let pass = move || crate::tokencleaner::reconcile(&r).and_then(|()| reconcile(&r, &s));
                match tokio::task::spawn_blocking(pass).await {
                    Ok(Err(e)) if e.code != 409 && e.code != 404 => tracing::warn!("certificates: {e}"),
                    Err(e) => tracing::warn!("certificates: pass panicked: {e}"),
                    _ => {}
                }
                let change = async {
                    loop {
                        match watch.next().await {
                            Ok(e) if e.kv.key.starts_with("/registry/certificatesigningrequests/") => return true,
                            Ok(_) => {}
                            Err(_) => return false, // lagged: watch again
                        }
                    }
                };
                tokio::select! {
                    live = change => if !live { break },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_apimachinery::registry::WriteOptions;
    use serde_json::json;

    fn csr_pem(cn: &str, sans: &[&str]) -> (String, rcgen::KeyPair) {
        let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        (p.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn create(reg: &Registry, name: &str, cn: &str, user: &str, groups: &[&str]) {
        create_for(reg, name, (KUBELET_CLIENT_SIGNER, &["digital signature", "client auth"]), cn, &[], user, groups);
    }

    fn create_for(
        reg: &Registry,
        name: &str,
        (signer, usages): (&str, &[&str]),
        cn: &str,
        sans: &[&str],
        user: &str,
        groups: &[&str],
    ) {
        use base64::Engine as _;
        let (pem, _) = csr_pem(cn, sans);
        let o = json!({"metadata": {"name": name}, "spec": {"signerName": signer,
            "usages": usages, "username": user, "groups": groups,
            "request": base64::engine::general_purpose::STANDARD.encode(pem)}});
        reg.create(crate::rt("CertificateSigningRequest"), None, o, &WriteOptions::default()).unwrap();
    }

    fn get(reg: &Registry, name: &str) -> CertificateSigningRequest {
        orchestrator_apimachinery::typed::decode(
            reg.get(crate::rt("CertificateSigningRequest"), None, name).unwrap(),
            "csr",
        )
        .unwrap()
    }

    fn signer() -> Signer {
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = ca.self_signed(&key).unwrap();
        Signer { ca_cert_pem: cert.pem(), ca_key_pem: key.serialize_pem(), lifetime: Duration::from_secs(60) }
    }

    #[test]
    fn bootstrap_requests_are_approved_and_signed_unless_the_name_is_live() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let s = signer();
        create(&reg, "join", "system:node:n1", "system:bootstrap:abcdef", &[BOOTSTRAPPERS, "system:authenticated"]);
        create(&reg, "renew", "system:node:n2", "system:node:n2", &[NODES_GROUP]);
        create(&reg, "other", "system:node:n3", "system:node:n2", &[NODES_GROUP]);
        create(&reg, "person", "system:node:n4", "alice", &["devs"]);
        let live = json!({"metadata": {"name": "n5"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        reg.create(crate::rt("Node"), None, live, &WriteOptions::default()).unwrap();
        create(&reg, "taken", "system:node:n5", "system:bootstrap:abcdef", &[BOOTSTRAPPERS]);
        reconcile(&reg, &s).unwrap();
        reconcile(&reg, &s).unwrap();
        for issued in ["join", "renew"] {
            let c = get(&reg, issued);
            let pem = c.status.unwrap().certificate.unwrap().0;
            let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            let cert = block.parse_x509().unwrap();
            let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
            assert!(cn.starts_with("system:node:n"), "{cn}");
            let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
            assert_eq!(lifetime, 66, "60 s and a tenth of it backdated");
        }
        for pending in ["other", "person"] {
            let c = get(&reg, pending);
            assert!(c.status.is_none_or(|s| s.conditions.is_none() && s.certificate.is_none()), "{pending}");
        }
        let taken = get(&reg, "taken");
        assert!(has_condition(&taken, "Denied"));
        assert!(taken.status.unwrap().certificate.is_none());
    }

    #[test]
    fn a_node_gets_a_serving_certificate_for_its_own_names_only() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let node = json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "h1"}]}});
        reg.create(crate::rt("Node"), None, node, &WriteOptions::default()).unwrap();
        let serving = (KUBELET_SERVING_SIGNER, &["digital signature", "server auth"][..]);
        let n1 = ("system:node:n1", &[NODES_GROUP, "system:authenticated"][..]);
        create_for(&reg, "own", serving, "system:node:n1", &["n1", "h1", "10.0.0.5"], n1.0, n1.1);
        create_for(&reg, "foreign-ip", serving, "system:node:n1", &["n1", "10.0.0.9"], n1.0, n1.1);
        create_for(&reg, "foreign-name", serving, "system:node:n1", &["api.example"], n1.0, n1.1);
        create_for(&reg, "for-another", serving, "system:node:n1", &["n1"], "system:node:n2", &[NODES_GROUP]);
        create_for(&reg, "no-node-yet", serving, "system:node:n3", &["n3"], "system:node:n3", &[NODES_GROUP]);
        reconcile(&reg, &signer()).unwrap();
        reconcile(&reg, &signer()).unwrap();
        let pem = get(&reg, "own").status.unwrap().certificate.unwrap().0;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = block.parse_x509().unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(sans, 3, "the names it asked for");
        let server_auth = cert.extended_key_usage().unwrap().unwrap().value.server_auth;
        assert!(server_auth);
        for pending in ["foreign-ip", "foreign-name", "for-another", "no-node-yet"] {
            let c = get(&reg, pending);
            assert!(c.status.is_none_or(|s| s.conditions.is_none() && s.certificate.is_none()), "{pending}");
        }
    }

    #[test]
    fn a_nodes_requests_go_with_its_node_and_a_join_in_progress_stays() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        let s = signer();
        let bootstrappers = ("system:bootstrap:abcdef", &[BOOTSTRAPPERS, "system:authenticated"][..]);
        create(&reg, "join-w1", "system:node:w1", bootstrappers.0, bootstrappers.1);
        create(&reg, "join-w2", "system:node:w2", bootstrappers.0, bootstrappers.1);
        let serving = (KUBELET_SERVING_SIGNER, &["digital signature", "server auth"][..]);
        create_for(&reg, "serve-w1", serving, "system:node:w1", &["w1"], "system:node:w1", &[NODES_GROUP]);
        create(&reg, "person", "system:node:w1", "alice", &["devs"]);
        // Someone else's request, for a client certificate of another signer.
        use base64::Engine as _;
        let (pem, _) = csr_pem("system:node:w1", &[]);
        let other = json!({"metadata": {"name": "other-signer"}, "spec": {"signerName": CLIENT_SIGNER,
            "usages": ["client auth"], "username": "alice", "groups": ["devs"],
            "request": base64::engine::general_purpose::STANDARD.encode(pem)}});
        reg.create(crate::rt("CertificateSigningRequest"), None, other, &WriteOptions::default()).unwrap();
        reconcile(&reg, &s).unwrap();
        // The kubelet registers its Node once it has its certificate.
        let node = json!({"metadata": {"name": "w1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.5.0.2"}]}});
        reg.create(crate::rt("Node"), None, node, &WriteOptions::default()).unwrap();
        reconcile(&reg, &s).unwrap();
        let w1: Node =
            orchestrator_apimachinery::typed::decode(reg.get(crate::rt("Node"), None, "w1").unwrap(), "node").unwrap();
        for owned in ["join-w1", "serve-w1", "person"] {
            let refs = get(&reg, owned).metadata.owner_references.unwrap_or_default();
            assert_eq!(refs.len(), 1, "{owned}: {refs:?}");
            assert_eq!(
                (refs[0].kind.as_str(), refs[0].name.as_str(), refs[0].uid.as_str()),
                ("Node", "w1", uid(&w1.metadata))
            );
        }
        for free in ["join-w2", "other-signer"] {
            assert!(get(&reg, free).metadata.owner_references.is_none(), "{free}");
        }
        // Owned once: another pass changes nothing.
        let before = get(&reg, "join-w1").metadata.resource_version;
        reconcile(&reg, &s).unwrap();
        assert_eq!(get(&reg, "join-w1").metadata.resource_version, before);

        // The node leaves: its Node is deleted, the collector takes its requests.
        reg.delete(crate::rt("Node"), None, "w1", &Default::default()).unwrap();
        crate::gc::reconcile(&reg).unwrap();
        let left: Vec<String> = list_typed::<CertificateSigningRequest>(&reg)
            .unwrap()
            .iter()
            .map(|c| name(&c.metadata).to_string())
            .collect();
        assert_eq!(left, ["join-w2", "other-signer"]);
    }

    #[test]
    fn approved_by_hand_is_signed_and_a_bad_usage_fails() {
        let d = tempfile::tempdir().unwrap();
        let reg = crate::test_registry(&d);
        create(&reg, "person", "system:node:n4", "alice", &["devs"]);
        add_condition(&reg, "person", condition("Approved", "KubectlApprove", "by hand")).unwrap();
        reconcile(&reg, &signer()).unwrap();
        assert!(get(&reg, "person").status.unwrap().certificate.is_some());
        let mut c = get(&reg, "person");
        c.spec.usages = Some(vec!["code signing".into()]);
        assert!(sign(&signer(), &c).unwrap_err().contains("code signing"));
    }
}
