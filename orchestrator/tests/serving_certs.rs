//! Certificates that never lapse (issue 17 item 4): the API server's and
//! the kubelet's serving certificates, issued with lifetimes of seconds,
//! are renewed before they end while kubectl requests and a `kubectl logs
//! -f` stream go on, with no request failing and no pod restarted; the
//! kubelet's comes by CertificateSigningRequest (signer
//! `kubernetes.io/kubelet-serving`). The cluster CA's approaching expiry is
//! a Warning Event and a log line. Real `orchestrator` processes.

mod common;
mod kubelet_support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubelet_support::{BUSYBOX, Cluster};

/// The certificate a TLS server at `addr` presents (PEM), as openssl sees it.
fn presented(addr: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin =
        text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate from {addr}: {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
    text[begin..end].to_string()
}

/// notAfter − notBefore of a PEM certificate, seconds.
fn lifetime(pem: &str) -> i64 {
    let (before, after) = orchestrator_http::pki::validity_of(format!("{pem}-----END CERTIFICATE-----\n").as_bytes())
        .expect("a certificate");
    after - before
}

#[test]
fn serving_certificates_are_renewed_with_no_request_failing() {
    let Some(c) = Cluster::start_split_with(&["--cluster-signing-duration", "20s", "--serving-cert-lifetime", "20s"])
    else {
        return;
    };
    let kubelet_pid = c.kubelet_pid();
    let server_pid = c.server_pid();
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticking}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done']\n"
    ));
    c.wait_for(&["get", "pod", "ticking"], Duration::from_secs(60), |s| s.contains("Running"));
    let container = c.pod_field("ticking", ".status.containerStatuses[0].containerID");
    let kubeconfig = std::fs::read_to_string(c.data.path().join("admin.kubeconfig")).unwrap();
    let api = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: https://")).unwrap().to_string();
    let port = c.ok(&["get", "node", &c.node, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]);
    let kubelet = format!("127.0.0.1:{port}");
    let kubelet_file = c.kubelet_dir().join("pki/kubelet-server-current.pem");

    // The kubelet's serving certificate comes by CSR (the self-signed one
    // is gone once it is issued).
    c.wait_for(&["get", "csr", "--no-headers"], Duration::from_secs(60), |s| {
        s.lines().any(|l| l.contains("kubernetes.io/kubelet-serving") && l.contains("Approved,Issued"))
    });
    let rows = c.ok(&["get", "csr", "--no-headers"]);
    assert!(rows.contains(&format!("system:node:{}", c.node)), "requested by the node itself: {rows}");

    // A stream opened before the renewals, read after them.
    let mut follow = Command::new(&c.kubectl)
        .args(["logs", "-f", "ticking"])
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let first_api = presented(&api);
    assert!(lifetime(&first_api) <= 22, "the API server's certificate lives 20 s (and 2 s backdated)");
    let mut api_certs = vec![first_api];
    let mut kubelet_certs = vec![presented(&kubelet)];
    let (mut requests, started) = (0, Instant::now());
    // Past two full lifetimes: every certificate seen at the start has expired.
    while started.elapsed() < Duration::from_secs(50) {
        for args in [&["get", "pod", "ticking", "-o", "name"][..], &["logs", "ticking", "--tail=1"][..]] {
            let out = c.run(args);
            assert!(
                out.status.success(),
                "kubectl {args:?} failed after {:?}: {}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            );
            requests += 1;
        }
        for (addr, seen) in [(&api, &mut api_certs), (&kubelet, &mut kubelet_certs)] {
            let now = presented(addr);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
    }
    eprintln!(
        "figure: {requests} kubectl requests in {:?}; {} API server and {} kubelet serving certificates seen",
        started.elapsed(),
        api_certs.len(),
        kubelet_certs.len()
    );
    assert!(api_certs.len() >= 3, "the API server's certificate was renewed at least twice: {}", api_certs.len());
    assert!(kubelet_certs.len() >= 3, "the kubelet's certificate was renewed at least twice: {}", kubelet_certs.len());
    let stored = std::fs::read_to_string(&kubelet_file).unwrap();
    assert!(stored.contains(kubelet_certs.last().unwrap()), "the kubelet serves the certificate it keeps");
    let serving_csrs = c
        .ok(&["get", "csr", "--no-headers"])
        .lines()
        .filter(|l| l.contains("kubernetes.io/kubelet-serving") && l.contains("Approved,Issued"))
        .count();
    assert!(serving_csrs >= 3, "{serving_csrs} kubelet-serving requests issued");

    // The stream opened before is still going: it shows lines logged after.
    let mut buf = vec![0u8; 1 << 16];
    let n = follow.stdout.as_mut().unwrap().read(&mut buf).unwrap();
    assert!(n > 0, "kubectl logs -f still streams");
    let _ = follow.kill();
    let _ = follow.wait();
    let followed = String::from_utf8_lossy(&buf[..n]).into_owned();
    let last: u64 = followed.lines().rev().find_map(|l| l.strip_prefix("tick ")?.trim().parse().ok()).unwrap_or(0);
    assert!(last > 0, "{followed}");

    assert_eq!(c.kubelet_pid(), kubelet_pid);
    assert_eq!(c.server_pid(), server_pid);
    assert!(std::path::Path::new(&format!("/proc/{kubelet_pid}")).exists(), "the kubelet kept running");
    assert_eq!(c.pod_field("ticking", ".status.containerStatuses[0].containerID"), container);
    assert_eq!(c.pod_field("ticking", ".status.containerStatuses[0].restartCount"), "0");
    let log = c.server_log();
    assert!(!log.contains("certificate renewal"), "no renewal failed: {log}");
}

#[test]
fn a_cluster_ca_ending_within_a_year_is_warned_about() {
    let Some(kubectl) = common::kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = orchestrator_http::pki::generate_ca_lasting("short-lived-ca", Duration::from_secs(30 * 86400)).unwrap();
    let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    orchestrator_http::pki::write_private(&cert, &ca.cert_pem).unwrap();
    orchestrator_http::pki::write_private(&key, &ca.key_pem).unwrap();
    let s = common::Server::start_with_args(
        dir,
        kubectl,
        &["--ca-cert", cert.to_str().unwrap(), "--ca-key", key.to_str().unwrap()],
    );
    let events = s.wait_for(
        &["get", "events", "-o", "jsonpath={range .items[*]}{.type} {.reason}: {.message}{\"\\n\"}{end}"],
        Duration::from_secs(20),
        |o| o.contains("CACertificateExpiring"),
    );
    assert!(
        events.contains("Warning CACertificateExpiring: the cluster CA (CN=short-lived-ca) expires at"),
        "{events}"
    );
    assert!(events.contains("in 29 days") || events.contains("in 30 days"), "{events}");
    assert!(s.log().contains("the cluster CA (CN=short-lived-ca) expires at"), "{}", s.log());

    // A CA with ten years left: nothing said.
    let Some(quiet) = common::Server::start() else { return };
    std::thread::sleep(Duration::from_secs(2));
    assert!(!quiet.ok(&["get", "events", "-A"]).contains("CACertificateExpiring"));
}
