//! A kubelet that knows every control plane (issue 19 item 5): three etcd
//! members, two API servers on them, a worker's `orchestrator kubelet`
//! given both (`--server A,B`) over a real containerd. The API server it
//! uses is killed with SIGKILL: the kubelet moves to the other, resumes its
//! watches from their last resourceVersion, keeps its Node Ready and its
//! pod running (same container, no restart), and starts a pod created
//! through the survivor. `cargo test -p orchestrator --test failover`

mod common;
mod kubelet_support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use kubelet_support::{BUSYBOX, Containerd, create_token};
use orchestrator_store_etcd::local::{self, LocalCluster};

const NODE: &str = "failover-1";

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
    )
}

/// The kubelet, killed on drop (before containerd cleans up after it).
struct Kubelet(Child);

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unix_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .unix_timestamp()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn a_kubelet_given_two_api_servers_moves_to_the_survivor_and_keeps_its_pods() {
    let Some(kubectl) = common::kubectl() else { return };
    if !kubelet_support::available() || !local::available() {
        return;
    }
    let _etcd = LocalCluster::start(3).unwrap();
    let url = _etcd.url();
    let mut a = Server::start_on_etcd(tempfile::tempdir().unwrap(), kubectl.clone(), &url, "warn", &[]);
    let (ca, key) = (a.dir.path().join("ca.crt"), a.dir.path().join("ca.key"));
    let extra = ["--ca-cert", ca.to_str().unwrap(), "--ca-key", key.to_str().unwrap()];
    let b = Server::start_on_etcd(tempfile::tempdir().unwrap(), kubectl, &url, "warn", &extra);

    let ctd = Containerd::start();
    let dir = ctd.dir.path().join("kubelet");
    std::fs::create_dir_all(&dir).unwrap();
    let (token, pin) = create_token(&a.kubeconfig(), "1h");
    std::fs::write(dir.join("token"), token).unwrap();
    let log_path = dir.join("kubelet.log");
    let servers = format!("https://{},https://{}", a.address, b.address);
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["kubelet", "--server", &servers, "--ca-cert-hash", &pin, "--node-name", NODE])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--kubelet-dir")
        .arg(&dir)
        .arg("--cri-socket")
        .arg(&ctd.socket)
        .arg("--cni-conf-dir")
        .arg(&ctd.cni_dir)
        .args(["--pod-cidr", &ctd.pod_cidr, "--cni-bridge", &ctd.bridge])
        .args(["--node-ip", "127.0.0.1", "--kubelet-listen", "127.0.0.1:0", "--disable-service-proxy"])
        .env("PLINTH_LOG", "orchestrator=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let kubelet = Kubelet(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(line.contains("running"), "the kubelet did not start: {line:?}\n{}", log());
    b.wait_for(&["get", "node", NODE], Duration::from_secs(60), |o| o.contains(" Ready "));

    b.apply(&pod("steady"), &[]);
    let running = ["get", "pod", "steady", "-o", "jsonpath={.status.phase}"];
    b.wait_for(&running, Duration::from_secs(60), |o| o == "Running");
    let container = "jsonpath={.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}";
    let before = b.ok(&["get", "pod", "steady", "-o", container]);
    assert!(before.starts_with("containerd://") && before.ends_with(" 0"), "{before}");

    // The server the kubelet uses (the first it was given) dies.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = now();
    let died = Instant::now();

    // A pod created through the survivor starts on the node.
    b.apply(&pod("after"), &[]);
    b.wait_for(&["get", "pod", "after", "-o", "jsonpath={.status.phase}"], Duration::from_secs(90), |o| o == "Running");
    eprintln!("figure: API server killed → a pod created through the survivor Running in {:?}", died.elapsed());
    // Its heartbeats reach the survivor: the Lease is renewed after the
    // kill, and the Node stays Ready past a whole lease duration (40 s).
    let renewed = ["get", "lease", "-n", "kube-node-lease", NODE, "-o", "jsonpath={.spec.renewTime}"];
    b.wait_for(&renewed, Duration::from_secs(30), |t| !t.is_empty() && unix_of(t) > killed);
    while died.elapsed() < Duration::from_secs(45) {
        let ready = b.ok(&["get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        assert_eq!(ready, "True", "the Node left Ready {:?} after the kill\n{}", died.elapsed(), log());
        std::thread::sleep(Duration::from_secs(3));
    }
    let taints = b.ok(&["get", "node", NODE, "-o", "jsonpath={.spec.taints}"]);
    assert!(!taints.contains("unreachable"), "{taints}");
    // The pod ran on: the same container, not restarted.
    assert_eq!(b.ok(&["get", "pod", "steady", "-o", container]), before);

    // The kubelet said where it went, and its watches went on from their revisions.
    let text = log();
    assert!(text.contains(&format!("does not answer: using https://{}", b.address)), "{text}");
    assert!(text.contains("resuming"), "no watch was resumed:\n{text}");
    drop(kubelet);
}
