//! Workers join by token (issue 15 item 1): bootstrap tokens, discovery
//! with a CA pin, CertificateSigningRequests approved and signed by the
//! control plane, `kubectl get csr` and `kubectl certificate approve|deny`,
//! and renewal of the kubelet's client certificate with no restart.
//! The real `orchestrator server` and `orchestrator kubelet` processes.

mod common;
mod kubelet_support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use kubelet_support::{BUSYBOX, Cluster, create_token, node_kubeconfig};

/// `orchestrator kubelet` joining `s` as `node` with `token` and `pin`; no
/// containerd behind it, so after joining it stops at the runtime: the
/// join is what these runs prove.
fn join(s: &Server, node: &str, token: &str, pin: &str) -> (Output, PathBuf) {
    let dir = s.dir.path().join(format!("kubelet-{node}"));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["kubelet", "--server", &format!("https://{}", s.address), "--ca-cert-hash", pin])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--node-name", node, "--kubelet-listen", "127.0.0.1:0", "--disable-service-proxy"])
        .arg("--kubelet-dir")
        .arg(&dir)
        .arg("--cri-socket")
        .arg(dir.join("no-containerd.sock"))
        .env("PLINTH_LOG", "orchestrator=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out, dir)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn csrs(s: &Server) -> String {
    s.ok(&["get", "csr", "--no-headers"])
}

#[test]
fn join_by_token_and_bad_joins_leave_nothing() {
    let Some(s) = Server::start() else { return };
    let (token, pin) = create_token(&s.kubeconfig(), "1h");
    assert!(s.ok(&["-n", "kube-system", "get", "secrets"]).contains("bootstrap.kubernetes.io/token"));
    let id = token.split('.').next().unwrap();

    // Refused before anything is created: a malformed token, a wrong pin,
    // an unknown token, something that is no Plinth control plane.
    let other_pin = format!("sha256:{}", "0".repeat(64));
    let unknown = format!("{id}.0000000000000000");
    let cases: [(&str, &str, &str, &str); 3] = [
        ("bad1", "abc.def", pin.as_str(), "does not match the format [a-z0-9]{6}.[a-z0-9]{16}"),
        ("bad2", token.as_str(), other_pin.as_str(), "refusing to trust this server"),
        ("bad3", unknown.as_str(), pin.as_str(), &format!("refused bootstrap token {id}")),
    ];
    for (node, t, p, want) in cases {
        let (out, dir) = join(&s, node, t, p);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{node}: want {want:?} in {}", stderr(&out));
        assert!(!dir.join("pki/kubelet-client-current.pem").exists(), "{node}");
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let dir = s.dir.path().join("kubelet-nowhere");
    let tf = s.dir.path().join("token-nowhere");
    std::fs::write(&tf, &token).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["kubelet", "--server", &format!("https://127.0.0.1:{port}"), "--ca-cert-hash", &pin])
        .arg("--token-file")
        .arg(&tf)
        .args(["--node-name", "nowhere", "--kubelet-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("is not a Plinth control plane"), "{}", stderr(&out));
    assert_eq!(csrs(&s).trim(), "", "no request was made");

    // The real join: requested with the token, approved, signed; the
    // kubelet then acts as system:node:n1 in system:nodes.
    let (out, dir) = join(&s, "n1", &token, &pin);
    assert!(stderr(&out).contains("joined"), "{}", stderr(&out));
    let rows = csrs(&s);
    assert!(rows.contains(&format!("kubernetes.io/kube-apiserver-client-kubelet   system:bootstrap:{id}")), "{rows}");
    assert!(rows.contains("Approved,Issued"), "{rows}");
    let kc = node_kubeconfig(&format!("https://{}", s.address), &dir);
    let mut who =
        s.cmd(&kc, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"]);
    let who = String::from_utf8(who.output().unwrap().stdout).unwrap();
    assert!(who.starts_with("system:node:n1 ") && who.contains("system:nodes"), "{who}");
    assert!(!who.contains("system:masters"), "a kubelet is no cluster admin: {who}");
    let admin_only = s.cmd(&kc, &["auth", "can-i", "create", "clusterrolebindings"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&admin_only.stdout).trim(), "no");
    // A restart reuses the certificate: no token needed, no new request.
    std::fs::remove_file(dir.join("token")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["kubelet", "--server", &format!("https://{}", s.address), "--ca-cert-hash", &pin])
        .args(["--node-name", "n1", "--kubelet-listen", "127.0.0.1:0", "--disable-service-proxy", "--kubelet-dir"])
        .arg(&dir)
        .arg("--cri-socket")
        .arg(dir.join("no-containerd.sock"))
        .env("PLINTH_LOG", "orchestrator=info")
        .output()
        .unwrap();
    assert!(stderr(&again).contains("using the client certificate"), "{}", stderr(&again));
    assert_eq!(csrs(&s).lines().count(), 1);

    // A name taken by a live (Ready) Node: the request is denied, saying why.
    let _live = common::HollowNode::start(&s, "n2", 40);
    let (out, dir2) = join(&s, "n2", &token, &pin);
    assert!(stderr(&out).contains("node name \"n2\" is taken"), "{}", stderr(&out));
    assert!(!dir2.join("pki/kubelet-client-current.pem").exists());
    assert!(csrs(&s).contains("Denied"));

    // A deleted token and an expired one join nothing.
    s.ok(&["delete", "secret", "-n", "kube-system", &format!("bootstrap-token-{id}")]);
    let (out, _) = join(&s, "n3", &token, &pin);
    assert!(stderr(&out).contains(&format!("refused bootstrap token {id}")), "{}", stderr(&out));
    let (short, _) = create_token(&s.kubeconfig(), "1s");
    std::thread::sleep(Duration::from_secs(2));
    let (out, _) = join(&s, "n4", &short, &pin);
    assert!(stderr(&out).contains("refused bootstrap token"), "{}", stderr(&out));
    let short_id = short.split('.').next().unwrap();
    s.wait_for(&["-n", "kube-system", "get", "secrets", "-o", "name"], Duration::from_secs(20), |o| {
        !o.contains(&format!("bootstrap-token-{short_id}"))
    });
    assert_eq!(csrs(&s).lines().count(), 2, "only n1's and n2's requests: {}", csrs(&s));
    s.fails(&["get", "node", "n3"]);
    s.fails(&["get", "node", "n4"]);
}

/// A CSR written by hand (not a bootstrap or node request) waits for a
/// person: `kubectl certificate approve` issues it, `deny` refuses one.
#[test]
fn kubectl_certificate_approve_and_deny() {
    let Some(s) = Server::start() else { return };
    let key = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
        .arg(s.dir.path().join("k.pem"))
        .args(["-subj", "/O=system:nodes/CN=system:node:edge-7"])
        .output()
        .unwrap();
    assert!(key.status.success(), "{}", String::from_utf8_lossy(&key.stderr));
    let request = base64::engine::general_purpose::STANDARD.encode(&key.stdout);
    for name in ["by-hand", "refused"] {
        s.apply(
            &format!(
                "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\n\
                 spec:\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n  request: {request}\n"
            ),
            &[],
        );
    }
    let rows = csrs(&s);
    assert!(rows.contains("admin") && rows.contains("Pending"), "{rows}");
    let header = s.ok(&["get", "csr"]);
    for col in ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"] {
        assert!(header.contains(col), "{header}");
    }
    s.ok(&["certificate", "approve", "by-hand"]);
    s.ok(&["certificate", "deny", "refused"]);
    s.wait_for(&["get", "csr", "by-hand"], Duration::from_secs(20), |o| o.contains("Approved,Issued"));
    let refused = s.ok(&["get", "csr", "refused", "-o", "jsonpath={.status.conditions[0].type} {.status.certificate}"]);
    assert_eq!(refused.trim(), "Denied");
    // A request the kubelet signer would never sign is refused at creation, with the field.
    let bad = s.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: bad}}\n\
             spec:\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, server auth]\n  request: {request}\n"
        ),
    )
    .unwrap();
    let e = s.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(e.contains("spec.usages") && e.contains("usages did not match"), "{e}");
}

/// A worker joined by token renews its client certificate (a lifetime of
/// seconds) while it runs a pod: no restart of the kubelet, no pod
/// restarted, the Node stays Ready. Also the figure: kubelet start → Node Ready.
#[test]
fn worker_renews_its_certificate_without_restart() {
    let started = Instant::now();
    let Some(c) = Cluster::start_split_with(&["--cluster-signing-duration", "20s"]) else { return };
    eprintln!("figure: worker kubelet start (with a token) to Node Ready in {:?}", started.elapsed());
    let pid = c.kubelet_pid();
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: steady}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
    ));
    c.wait_for(&["get", "pod", "steady"], Duration::from_secs(60), |s| s.contains("Running"));
    let container = c.pod_field("steady", ".status.containerStatuses[0].containerID");
    let pem = c.kubelet_dir().join("pki/kubelet-client-current.pem");
    let first = std::fs::read(&pem).unwrap();
    // Two renewals (each at 70–90 % of 22 s); the serving certificate's
    // requests (kubernetes.io/kubelet-serving) are not counted.
    c.wait_for(&["get", "csr", "--no-headers"], Duration::from_secs(90), |s| {
        s.lines().filter(|l| l.contains("Approved,Issued") && l.contains("kube-apiserver-client-kubelet")).count() >= 3
    });
    assert_ne!(std::fs::read(&pem).unwrap(), first, "the certificate was replaced");
    let rows = c.ok(&["get", "csr", "--no-headers"]);
    assert!(rows.contains(&format!("system:node:{}", c.node)), "renewed with its own identity: {rows}");
    // Past the first certificate's expiry: the kubelet still reaches the API.
    std::thread::sleep(Duration::from_secs(5));
    c.wait_for(&["get", "node", &c.node], Duration::from_secs(30), |s| s.contains(" Ready "));
    assert_eq!(c.kubelet_pid(), pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the kubelet kept running");
    assert_eq!(c.pod_field("steady", ".status.containerStatuses[0].containerID"), container);
    assert_eq!(c.pod_field("steady", ".status.containerStatuses[0].restartCount"), "0");
    assert!(!c.server_log().contains("certificate renewal ("), "no renewal failed: {}", c.server_log());
}
