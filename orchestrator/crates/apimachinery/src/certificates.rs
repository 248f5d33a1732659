//! `certificates.k8s.io/v1` CertificateSigningRequests: the PEM request
//! (parsed, its self-signature checked), the built-in signers' rules as
//! upstream's (`kubernetes.io/kube-apiserver-client-kubelet`: CN
//! `system:node:<name>`, O exactly `system:nodes`, no subject alternative
//! names, usages `digital signature` + `client auth`, optionally `key
//! encipherment`; `kubernetes.io/kubelet-serving`: CN `system:node:<name>`,
//! O exactly `system:nodes`, at least one DNS or IP name and no others,
//! usages `digital signature` + `server auth`, optionally `key
//! encipherment`), and the validation the registry runs on create and
//! update. The approver and the signer (controllers) read the same rules.

use serde_json::Value;

/// (field path, message), as `validation::Causes`.
type Causes = Vec<(String, String)>;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";

/// Upstream's `KeyUsage` values.
const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// What a signer looks at in a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub emails: usize,
    /// IP addresses, as text (`10.0.0.5`, `fd00::5`).
    pub ips: Vec<String>,
    pub uris: usize,
}

/// Parses a PEM `CERTIFICATE REQUEST` and checks its signature.
pub fn parse_request(pem: &[u8]) -> Result<Request, String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509CertificationRequest};
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| "not a PEM block".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(format!("PEM block type must be CERTIFICATE REQUEST, not {:?}", block.label));
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("not a PKCS#10 certificate request: {e}"))?;
    csr.verify_signature().map_err(|e| format!("the request's signature does not verify: {e}"))?;
    let subject = &csr.certification_request_info.subject;
    let mut r = Request {
        common_name: subject.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string(),
        organizations: subject.iter_organization().filter_map(|a| a.as_str().ok().map(str::to_string)).collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(n) => r.dns_names.push(n.to_string()),
                    GeneralName::RFC822Name(_) => r.emails += 1,
                    GeneralName::IPAddress(ip) => r.ips.push(ip_text(ip)),
                    GeneralName::URI(_) => r.uris += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(r)
}

fn ip_text(b: &[u8]) -> String {
    match <[u8; 4]>::try_from(b) {
        Ok(v4) => std::net::Ipv4Addr::from(v4).to_string(),
        Err(_) => {
            <[u8; 16]>::try_from(b).map_or_else(|_| format!("{b:02x?}"), |v6| std::net::Ipv6Addr::from(v6).to_string())
        }
    }
}

/// Whether `usages` are `required`, optionally with `key encipherment` (upstream's RSA and non-RSA sets).
fn usages_match(usages: &[String], required: [&str; 2]) -> bool {
    let mut allowed = required.to_vec();
    allowed.push("key encipherment");
    required.iter().all(|u| usages.iter().any(|x| x == u)) && usages.iter().all(|u| allowed.contains(&u.as_str()))
}

fn node_subject_problem(r: &Request) -> Option<(&'static str, String)> {
    if r.organizations != [NODES_GROUP] {
        return Some(("spec.request", format!("subject organization is not {NODES_GROUP}")));
    }
    None
}

fn node_common_name_problem(r: &Request) -> Option<(&'static str, String)> {
    if !r.common_name.starts_with(NODE_USER_PREFIX) || r.common_name.len() == NODE_USER_PREFIX.len() {
        return Some(("spec.request", format!("subject common name does not begin with {NODE_USER_PREFIX}")));
    }
    None
}

/// Upstream's `ValidateKubeletServingCSR`: why `kubernetes.io/kubelet-serving`
/// would not sign this request, if it would not.
pub fn kubelet_serving_problem(r: &Request, usages: &[String]) -> Option<(&'static str, String)> {
    if let Some(p) = node_subject_problem(r) {
        return Some(p);
    }
    if r.dns_names.is_empty() && r.ips.is_empty() {
        return Some(("spec.request", "DNS or IP subjectAltName is required".into()));
    }
    for (n, what) in [(r.emails, "Email"), (r.uris, "URI")] {
        if n > 0 {
            return Some(("spec.request", format!("{what} subjectAltNames are not allowed")));
        }
    }
    if !usages_match(usages, ["digital signature", "server auth"]) {
        return Some((
            "spec.usages",
            format!(
                "usages did not match [\"digital signature\" \"server auth\"] (optionally \"key encipherment\"): {usages:?}"
            ),
        ));
    }
    node_common_name_problem(r)
}

/// Upstream's `ValidateKubeletClientCSR`: why `kubernetes.io/kube-apiserver-client-kubelet`
/// would not sign this request, if it would not.
pub fn kubelet_client_problem(r: &Request, usages: &[String]) -> Option<(&'static str, String)> {
    if let Some(p) = node_subject_problem(r) {
        return Some(p);
    }
    for (n, what) in [(r.dns_names.len(), "DNS"), (r.emails, "Email"), (r.ips.len(), "IP"), (r.uris, "URI")] {
        if n > 0 {
            return Some(("spec.request", format!("{what} subjectAltNames are not allowed")));
        }
    }
    if let Some(p) = node_common_name_problem(r) {
        return Some(p);
    }
    if !usages_match(usages, ["digital signature", "client auth"]) {
        return Some((
            "spec.usages",
            format!(
                "usages did not match [\"digital signature\" \"client auth\"] (optionally \"key encipherment\"): {usages:?}"
            ),
        ));
    }
    None
}

pub fn usages(o: &Value) -> Vec<String> {
    o.pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The decoded PEM of `spec.request` (stored base64, as `[]byte` is in JSON).
pub fn request_pem(o: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = o.pointer("/spec/request").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The condition of `type` (`Approved`, `Denied`, `Failed`), if set.
pub fn condition<'a>(o: &'a Value, ty: &str) -> Option<&'a Value> {
    o.pointer("/status/conditions").and_then(Value::as_array)?.iter().find(|c| c["type"] == ty)
}

/// Validation of a CSR on create (the form of a non-empty `signerName` is
/// `validation`'s, which knows DNS names).
pub fn validate(o: &Value, causes: &mut Causes) {
    let signer = o.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
    if signer.is_empty() {
        causes.push(("spec.signerName".into(), "Required value".into()));
    }
    let usages = usages(o);
    if usages.is_empty() {
        causes.push(("spec.usages".into(), "Required value".into()));
    }
    for (i, u) in usages.iter().enumerate() {
        if !KNOWN_USAGES.contains(&u.as_str()) {
            causes.push((format!("spec.usages[{i}]"), format!("Unsupported value: {u:?}")));
        } else if usages[..i].contains(u) {
            causes.push((format!("spec.usages[{i}]"), format!("Duplicate value: {u:?}")));
        }
    }
    if let Some(s) = o.pointer("/spec/expirationSeconds").and_then(Value::as_i64)
        && s < 600
    {
        causes.push((
            "spec.expirationSeconds".into(),
            format!("Invalid value: {s}: may not specify a duration less than 600 seconds (10 minutes)"),
        ));
    }
    let request = match request_pem(o) {
        None => {
            causes.push(("spec.request".into(), "Required value".into()));
            return;
        }
        Some(pem) => match parse_request(&pem) {
            Ok(r) => r,
            Err(e) => {
                causes.push(("spec.request".into(), format!("Invalid value: []byte{{...}}: {e}")));
                return;
            }
        },
    };
    let problem = match signer {
        KUBELET_CLIENT_SIGNER => kubelet_client_problem(&request, &usages),
        KUBELET_SERVING_SIGNER => kubelet_serving_problem(&request, &usages),
        _ => None,
    };
    if let Some((field, why)) = problem {
        causes.push((field.into(), format!("Invalid value: {why} (signer {signer})")));
    }
    check_conditions(o, causes);
}

fn check_conditions(o: &Value, causes: &mut Causes) {
    let approved = condition(o, "Approved").is_some();
    if approved && condition(o, "Denied").is_some() {
        causes.push((
            "status.conditions".into(),
            "Forbidden: Approved and Denied conditions are mutually exclusive".into(),
        ));
    }
    let has_cert = o.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    if has_cert && !approved {
        causes.push((
            "status.certificate".into(),
            "Forbidden: certificate may only be set on an approved request".into(),
        ));
    }
}

/// Validation of a CSR update: the spec is immutable, so are an issued
/// certificate and an approval or denial once given.
pub fn validate_update(old: &Value, new: &Value, causes: &mut Causes) {
    if old.get("spec") != new.get("spec") {
        causes.push(("spec".into(), "Invalid value: field is immutable".into()));
    }
    let cert = |o: &Value| o.pointer("/status/certificate").and_then(Value::as_str).unwrap_or_default().to_string();
    if !cert(old).is_empty() && cert(old) != cert(new) {
        causes.push((
            "status.certificate".into(),
            "Forbidden: updates may not modify existing certificate content".into(),
        ));
    }
    for ty in ["Approved", "Denied"] {
        if condition(old, ty).is_some() && condition(new, ty).is_none() {
            causes.push((
                "status.conditions".into(),
                format!("Forbidden: updates may not remove a condition of type {ty:?}"),
            ));
        }
    }
    check_conditions(new, causes);
}

/// The condition column of `kubectl get csr`: `Pending`, or the
/// conditions (`Approved,Issued`, `Denied`, `Approved,Failed`).
pub fn condition_column(o: &Value) -> String {
    let mut shown: Vec<String> = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["status"] != "False")
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    if o.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
        shown.push("Issued".into());
    }
    if shown.is_empty() { "Pending".into() } else { shown.join(",") }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    pub fn csr_pem(cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let mut p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr(pem: &str, signer: &str, usages: &[&str]) -> Value {
        json!({"metadata": {"name": "c"}, "spec": {"signerName": signer, "usages": usages,
            "request": base64::engine::general_purpose::STANDARD.encode(pem)}})
    }

    fn check(o: &Value) -> Vec<(String, String)> {
        let mut c = Causes::new();
        validate(o, &mut c);
        c
    }

    const NODE: &[&str] = &["digital signature", "client auth"];

    #[test]
    fn kubelet_client_rules_as_upstream() {
        let good = csr_pem("system:node:n1", &[NODES_GROUP], &[]);
        assert!(check(&csr(&good, KUBELET_CLIENT_SIGNER, NODE)).is_empty());
        assert!(
            check(&csr(&good, KUBELET_CLIENT_SIGNER, &["digital signature", "key encipherment", "client auth"]))
                .is_empty()
        );
        let cases: [(String, &[&str], &str); 5] = [
            (csr_pem("alice", &[NODES_GROUP], &[]), NODE, "subject common name does not begin with system:node:"),
            (csr_pem("system:node:n1", &["system:masters"], &[]), NODE, "subject organization is not system:nodes"),
            (
                csr_pem("system:node:n1", &[NODES_GROUP, "system:masters"], &[]),
                NODE,
                "subject organization is not system:nodes",
            ),
            (csr_pem("system:node:n1", &[NODES_GROUP], &["n1.example"]), NODE, "DNS subjectAltNames are not allowed"),
            (good.clone(), &["digital signature", "server auth"], "usages did not match"),
        ];
        for (pem, usages, want) in cases {
            let c = check(&csr(&pem, KUBELET_CLIENT_SIGNER, usages));
            assert!(c.iter().any(|(_, m)| m.contains(want)), "{want}: {c:?}");
        }
        // Another signer's requests are not held to the kubelet's rules.
        assert!(check(&csr(&csr_pem("alice", &[], &[]), CLIENT_SIGNER, &["client auth"])).is_empty());
    }

    #[test]
    fn kubelet_serving_rules_as_upstream() {
        const SERVING: &[&str] = &["digital signature", "server auth"];
        let good = csr_pem("system:node:n1", &[NODES_GROUP], &["n1", "10.0.0.5"]);
        assert!(check(&csr(&good, KUBELET_SERVING_SIGNER, SERVING)).is_empty());
        let r = parse_request(good.as_bytes()).unwrap();
        assert_eq!((r.dns_names, r.ips), (vec!["n1".to_string()], vec!["10.0.0.5".to_string()]));
        let cases: [(String, &[&str], &str); 4] = [
            (csr_pem("system:node:n1", &[NODES_GROUP], &[]), SERVING, "DNS or IP subjectAltName is required"),
            (
                csr_pem("alice", &[NODES_GROUP], &["n1"]),
                SERVING,
                "subject common name does not begin with system:node:",
            ),
            (csr_pem("system:node:n1", &["devs"], &["n1"]), SERVING, "subject organization is not system:nodes"),
            (good, NODE, "usages did not match [\"digital signature\" \"server auth\"]"),
        ];
        for (pem, usages, want) in cases {
            let c = check(&csr(&pem, KUBELET_SERVING_SIGNER, usages));
            assert!(c.iter().any(|(f, m)| f.starts_with("spec.") && m.contains(want)), "{want}: {c:?}");
        }
    }

    #[test]
    fn request_signer_and_usages_are_checked() {
        let pem = csr_pem("system:node:n1", &[NODES_GROUP], &[]);
        let c =
            check(&csr("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", KUBELET_CLIENT_SIGNER, NODE));
        assert_eq!(c[0].0, "spec.request");
        let c = check(&csr(&pem, "", &["client auth", "client auth", "bogus"]));
        let fields: Vec<&str> = c.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.signerName", "spec.usages[1]", "spec.usages[2]"]);
        // A request whose signature does not verify (a byte of the signature flipped).
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        let mut bad = der.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bad);
        let tampered = format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
        assert!(parse_request(tampered.as_bytes()).is_err());
    }

    #[test]
    fn updates_keep_spec_certificate_and_decisions() {
        let pem = csr_pem("system:node:n1", &[NODES_GROUP], &[]);
        let old = csr(&pem, KUBELET_CLIENT_SIGNER, NODE);
        let mut approved = old.clone();
        approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Y2VydA=="});
        let mut c = Causes::new();
        validate_update(&old, &approved, &mut c);
        assert!(c.is_empty(), "{c:?}");
        let mut both = approved.clone();
        both["status"]["conditions"].as_array_mut().unwrap().push(json!({"type": "Denied", "status": "True"}));
        let mut unapproved = approved.clone();
        unapproved["status"]["conditions"] = json!([]);
        let mut respec = approved.clone();
        respec["spec"]["usages"] = json!(["client auth"]);
        for bad in [both, unapproved, respec] {
            let mut c = Causes::new();
            validate_update(&approved, &bad, &mut c);
            assert!(!c.is_empty(), "{bad}");
        }
        assert_eq!(condition_column(&old), "Pending");
        assert_eq!(condition_column(&approved), "Approved,Issued");
    }
}
