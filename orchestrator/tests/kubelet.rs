//! The kubelet against a real containerd (runc, CNI bridge) and the real
//! control plane, driven with the real kubectl. Needs root and Debian's
//! containerd, runc, containernetworking-plugins, umoci, skopeo,
//! busybox-static and gcc (scripts/setup-debian.sh); skipped without them
//! unless CI=true.

mod common;
mod kubelet_support;

use std::io::Read as _;
use std::time::{Duration, Instant};

use kubelet_support::{BUSYBOX, Cluster};

const READY: Duration = Duration::from_secs(60);

/// Three replicas serve, over the pod network, a page an init container
/// assembled in an emptyDir from a configMap volume and an env var taken
/// from the configMap; a fourth pod fetches it from a replica (pod to pod).
#[test]
fn deployment_replicas_become_ready_with_ips_volumes_and_network() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: site}}
data: {{index.html: "hello from a configMap\n", who: "plinth"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      volumes:
      - {{name: www, emptyDir: {{}}}}
      - {{name: site, configMap: {{name: site}}}}
      initContainers:
      - name: assemble
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'cat /site/index.html > /www/index.html && echo "by $WHO on $NODE" >> /www/index.html']
        env:
        - {{name: WHO, valueFrom: {{configMapKeyRef: {{name: site, key: who}}}}}}
        - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        volumeMounts:
        - {{name: www, mountPath: /www}}
        - {{name: site, mountPath: /site, readOnly: true}}
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [httpd, -f, -p, "8080", -h, /www]
        ports: [{{containerPort: 8080}}]
        volumeMounts: [{{name: www, mountPath: /www}}]
"#
    ));
    c.wait_for(&["get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}"], READY, |s| s == "3");
    let ips = c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    let prefix = c.containerd.pod_cidr.rsplit_once('.').unwrap().0;
    for ip in &ips {
        assert!(ip.starts_with(prefix), "{ip} is in {}", c.containerd.pod_cidr);
        let page = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("http://{ip}:8080/")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&page.stdout), "hello from a configMap\nby plinth on node-1\n", "from {ip}");
    }
    // Their traffic leaving the node is masqueraded by one rule for the pod CIDR, none per pod.
    let masq = orchestrator_node_net::proxy::Chains::new(&c.containerd.bridge).pod_masquerade();
    let out = std::process::Command::new("iptables").args(["-t", "nat", "-S", &masq]).output().unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains(&format!("-s {} ", c.containerd.pod_cidr)) && rules.contains("-j MASQUERADE"), "{rules}");
    assert_eq!(kubelet_support::nat_rules(&c.containerd.bridge), "");
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    // Pod to pod: a run-once pod fetches the page from the first replica and succeeds.
    c.ok(&[
        "run",
        "fetch",
        "--image",
        BUSYBOX,
        "--image-pull-policy=Never",
        "--restart=Never",
        "--",
        "wget",
        "-q",
        "-O-",
        &format!("http://{}:8080/", ips[0]),
    ]);
    c.wait_for(&["get", "pod", "fetch", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Succeeded");
    let statuses = c.pod_field("fetch", ".status.containerStatuses[0].state.terminated.reason");
    assert_eq!(statuses, "Completed");
    // A finished pod's sandbox is stopped: its address is released.
    let (uid, ip) = (c.pod_field("fetch", ".metadata.uid"), c.pod_field("fetch", ".status.podIP"));
    let start = Instant::now();
    while c.containerd.sandboxes().iter().any(|(_, u, ready)| *u == uid && *ready) {
        assert!(start.elapsed() < READY, "the finished pod's sandbox was not stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!kubelet_support::nat_rules(&c.containerd.bridge).contains(&format!("{ip}/32")));
    assert!(!c.kubelet_dir().join("ipam").read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy() == ip));
}

/// Two pods on the node get distinct addresses from the pod CIDR, each sees
/// its own address on its eth0, and each reaches the other by pod IP: a
/// TCP listener in one pod answers a client that `kubectl exec` runs in
/// the other, in both directions.
#[test]
fn two_pods_get_distinct_ips_and_reach_each_other() {
    let Some(c) = Cluster::start() else { return };
    // Each pod serves its own name over HTTP on 8080 (busybox httpd) and can run clients.
    let serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";
    for name in ["left", "right"] {
        c.ok(&["run", name, "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sh", "-c", serve]);
    }
    for name in ["left", "right"] {
        c.wait_for(&["get", "pod", name, "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| {
            s == "true"
        });
    }
    let (left, right) = (c.pod_field("left", ".status.podIP"), c.pod_field("right", ".status.podIP"));
    assert_ne!(left, right, "each pod has its own address");
    let prefix = format!("{}.", c.containerd.pod_cidr.rsplit_once('.').unwrap().0);
    for (name, ip) in [("left", &left), ("right", &right)] {
        assert!(ip.starts_with(&prefix), "{name}'s {ip} is in {}", c.containerd.pod_cidr);
        assert_eq!(c.pod_field(name, ".status.podIPs[0].ip"), *ip);
        // The address in the status is the one on the pod's interface.
        let addr = c.ok(&["exec", name, "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!(" {ip}/")), "{name}: {addr}");
    }
    for (from, to, ip) in [("left", "right", &right), ("right", "left", &left)] {
        // (busybox-static wget crashes with -T.)
        let page = c.ok(&["exec", from, "--", "wget", "-q", "-O-", &format!("http://{ip}:8080/")]);
        assert_eq!(page, format!("{to}\n"), "{from} fetched from {to} at {ip}");
    }
    // A raw TCP round trip as well: nc listens in one pod for as long as its
    // exec session lasts, the other connects to its pod IP (again until the
    // listener is up). The listener's stdin stays open until it is done: a
    // busybox nc whose stdin ends closes its sending half at once, and a
    // client that sees that before it has read its own stdin sends nothing.
    let mut listener = c.spawn(&["exec", "-i", "right", "--", "timeout", "60", "nc", "-l", "-p", "9000"]);
    let stdin = listener.stdin.take();
    let start = Instant::now();
    loop {
        let sent = c.run(&["exec", "left", "--", "sh", "-c", &format!("echo ping from left | nc -w 2 {right} 9000")]);
        if sent.status.success() {
            break;
        }
        assert!(start.elapsed() < READY, "left never reached right's listener: {sent:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut got = String::new();
    listener.stdout.take().unwrap().read_to_string(&mut got).unwrap();
    drop(stdin);
    assert!(listener.wait().unwrap().success());
    assert_eq!(got, "ping from left\n");
}

/// A pod's traffic leaving the node is masqueraded with the node's
/// address (one rule for the pod CIDR; the CNI bridge makes no rule per
/// pod): a server in a network namespace that has no route to the pod
/// CIDR, behind a veth from the host, answers the pod and sees the
/// host's end of the veth as the client. Pod to pod on the node stays
/// unmasqueraded (`two_pods_get_distinct_ips_and_reach_each_other`).
#[test]
fn a_pods_traffic_leaving_the_node_is_masqueraded() {
    let Some(c) = Cluster::start() else { return };
    let tag = format!("{}", std::process::id() % 100_000);
    let outside = Outside::new(&tag);
    let url = format!("http://{}:8080/cgi-bin/ip", outside.server);
    let fetch = format!("wget -q -O- {url} 2>&1; exec sleep 3600");
    c.ok(&["run", "out", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sh", "-c", &fetch]);
    let seen = c.wait_for(&["logs", "out"], READY, |s| !s.trim().is_empty());
    let pod_ip = c.pod_field("out", ".status.podIP");
    assert_eq!(seen.trim(), outside.host, "the server saw the host's address, not the pod's ({pod_ip})");
    // While the pod runs: no rule of the CNI network in POSTROUTING (the plugin's ipMasq made one per pod).
    assert_eq!(kubelet_support::nat_rules(&c.containerd.bridge), "", "no nat rule per pod");
}

/// A network namespace reached through a veth from the host, serving the
/// client's address over HTTP (busybox httpd, a CGI script printing
/// `REMOTE_ADDR`); it routes nothing but the veth's /30.
struct Outside {
    ns: String,
    host: String,
    server: String,
    httpd: std::process::Child,
    _www: tempfile::TempDir,
}

impl Outside {
    fn new(tag: &str) -> Outside {
        let n: u32 = tag.parse::<u32>().unwrap_or(0) % 250;
        let (ns, veth) = (format!("plout{tag}"), format!("plo{tag}"));
        let (host, server) = (format!("10.253.{n}.1"), format!("10.253.{n}.2"));
        let sh = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["netns", "add", &ns]);
        sh(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        sh(&["addr", "add", &format!("{host}/30"), "dev", &veth]);
        sh(&["link", "set", &veth, "up"]);
        sh(&["-n", &ns, "addr", "add", &format!("{server}/30"), "dev", "eth0"]);
        sh(&["-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["-n", &ns, "link", "set", "lo", "up"]);
        let www = tempfile::tempdir().unwrap();
        let cgi = www.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi).unwrap();
        let script = cgi.join("ip");
        std::fs::write(&script, "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n")
            .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let httpd = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p", &format!("{server}:8080"), "-h"])
            .arg(www.path())
            .spawn()
            .unwrap();
        Outside { ns, host, server, httpd, _www: www }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Services, as kube-proxy routes them: a NodePort Service's cluster IP
/// reaches both ready pods (each in turn, also the pod asking: hairpin),
/// from a pod and from the node; its node port answers on the node's
/// addresses; pods resolve Services by name through the cluster DNS; a
/// deleted Service leaves no rule behind.
#[test]
fn services_route_cluster_ips_and_node_ports_to_ready_endpoints() {
    let Some(c) = Cluster::start() else { return };
    let serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";
    for name in ["left", "right"] {
        c.ok(&[
            "run",
            name,
            "--labels",
            "app=echo",
            "--image",
            BUSYBOX,
            "--image-pull-policy=Never",
            "--",
            "sh",
            "-c",
            serve,
        ]);
    }
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    c.wait_for(&["get", "endpoints", "echo", "-o", "jsonpath={.subsets[*].addresses[*].ip}"], READY, |s| {
        s.split_whitespace().count() == 2
    });
    let ip = c.ok(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = c.ok(&["get", "service", "echo", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    assert!(node_port.parse::<u16>().is_ok_and(|n| (30000..=32767).contains(&n)), "{node_port}");
    assert!(c.ok(&["get", "service", "echo"]).contains(&format!("80:{node_port}/TCP")));

    // From a pod: 24 connections reach both pods (a miss has odds of 2⁻²³).
    let fetch = format!("for i in $(seq 24); do wget -q -O- http://{ip}/; done");
    let got = c.wait_for(&["exec", "left", "--", "sh", "-c", &fetch], READY, |s| s.lines().count() == 24);
    let answered: std::collections::BTreeSet<&str> = got.lines().collect();
    assert_eq!(answered, ["left", "right"].into(), "{got}");
    // From the node, to the cluster IP and to the node port on the bridge's address.
    let gateway = format!("{}.1", c.containerd.pod_cidr.rsplit_once('.').unwrap().0);
    for url in [format!("http://{ip}/"), format!("http://{gateway}:{node_port}/")] {
        let out = std::process::Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(page == "left\n" || page == "right\n", "{url}: {out:?}");
    }

    // Cluster DNS: pods resolve through the node's responder at 10.96.0.10.
    let resolv = c.ok(&["exec", "left", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("ndots:5"), "{resolv}");
    let found = c.ok(&["exec", "left", "--", "nslookup", "echo.default.svc.cluster.local"]);
    assert!(found.contains(&format!("Address: {ip}")), "{found}");
    let api = c.ok(&["exec", "left", "--", "nslookup", "kubernetes.default.svc.cluster.local"]);
    assert!(api.contains("Address: 10.96.0.1"), "{api}");
    let missing = c.run(&["exec", "left", "--", "nslookup", "nope.default.svc.cluster.local"]);
    let said = String::from_utf8_lossy(&missing.stdout).into_owned() + &String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("NXDOMAIN"), "{said}");
    let kube_dns = c.ok(&["get", "service", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(kube_dns, "10.96.0.10");

    c.ok(&["delete", "service", "echo"]);
    let rules = || {
        let out = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let start = std::time::Instant::now();
    while rules().contains(&format!("{ip}/32")) {
        assert!(start.elapsed() < READY, "the deleted service's rules stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!rules().contains(&format!("--dport {node_port}")));
}

/// A container that exits at once is restarted with back-off and shows
/// CrashLoopBackOff; a deleted pod's sandbox, network namespace and IP go
/// away, and the container saw SIGTERM first.
#[test]
fn crash_loop_back_off_and_deleted_pod_cleanup() {
    let Some(c) = Cluster::start() else { return };
    c.ok(&["run", "crash", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sh", "-c", "echo boom; exit 3"]);
    let trap = "trap 'echo TERM > /data/got-term; exit 0' TERM; while true; do sleep 0.2; done";
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: data, hostPath: {{path: "{host}", type: DirectoryOrCreate}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "{trap}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"#,
        host = c.data.path().join("graceful").display()
    ));
    c.wait_for(&["get", "pod", "graceful", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    let uid = c.pod_field("graceful", ".metadata.uid");
    assert!(c.containerd.sandboxes().iter().any(|(_, u, ready)| *u == uid && *ready));
    let netns_before = c.containerd.netns_count();
    let started = std::time::Instant::now();
    c.ok(&["delete", "pod", "graceful", "--wait=true"]);
    assert!(started.elapsed() < Duration::from_secs(15), "SIGTERM ended it well before the grace period");
    assert_eq!(std::fs::read_to_string(c.data.path().join("graceful/got-term")).unwrap(), "TERM\n");
    assert!(!c.containerd.sandboxes().iter().any(|(_, u, _)| *u == uid), "the sandbox was removed");
    assert_eq!(c.containerd.netns_count(), netns_before - 1, "its network namespace too");
    assert!(!c.kubelet_dir().join("pods").join(&uid).exists(), "and its volumes directory");

    let out = c.wait_for(
        &[
            "get",
            "pod",
            "crash",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount}",
        ],
        READY,
        |s| {
            s.starts_with("CrashLoopBackOff")
                && s.split(' ').nth(1).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 2)
        },
    );
    assert!(out.starts_with("CrashLoopBackOff"));
    assert_eq!(c.pod_field("crash", ".status.containerStatuses[0].lastState.terminated.exitCode"), "3");
    assert_eq!(c.pod_field("crash", ".status.phase"), "Running");
    let listed = c.ok(&["get", "pod", "crash"]);
    assert!(listed.contains("CrashLoopBackOff"), "{listed}");
    let reasons = c.event_reasons("crash");
    assert!(["Pulled", "Created", "Started", "BackOff"].iter().all(|r| reasons.contains(r)), "{reasons}");
    assert!(c.event_reasons("graceful").contains("Killing"));
    assert_eq!(c.ok(&["logs", "crash"]), "boom\n");
    assert_eq!(c.ok(&["logs", "crash", "--previous"]), "boom\n");
}

/// Killing the kubelet (with the control plane: one process) leaves the
/// containers running; the restarted kubelet adopts them instead of
/// starting new ones.
#[test]
fn kubelet_restart_adopts_running_containers() {
    let Some(mut c) = Cluster::start() else { return };
    c.ok(&["run", "steady", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sleep", "3600"]);
    c.wait_for(&["get", "pod", "steady", "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| {
        s == "true"
    });
    let before = c.pod_field("steady", ".status.containerStatuses[0].containerID");
    let ip = c.pod_field("steady", ".status.podIP");
    c.kill_server();
    c.start_server();
    // Several relists of the restarted kubelet.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.pod_field("steady", ".status.containerStatuses[0].containerID"), before);
    assert_eq!(c.pod_field("steady", ".status.containerStatuses[0].restartCount"), "0");
    assert_eq!(c.pod_field("steady", ".status.podIP"), ip);
    assert_eq!(c.containerd.sandboxes().len(), 1);
    // And it still manages them: a delete stops the pod.
    c.ok(&["delete", "pod", "steady", "--grace-period=1", "--wait=true"]);
    assert!(c.containerd.sandboxes().is_empty());
}

/// Faults each show upstream's reason and leave the rest of the node alone:
/// a pod asking for more memory than the node has is Unschedulable; a CNI
/// plugin that answers garbage fails the sandbox (FailedCreatePodSandBox,
/// retried with back-off until the plugin is mended); containerd killed
/// turns the Node NotReady ("container runtime is down") and, restarted,
/// Ready again with every container as it was.
#[test]
fn runtime_faults_are_reported_and_contained() {
    let Some(mut c) = Cluster::start() else { return };
    fn container(c: &Cluster, pod: &str) -> (String, String) {
        let status = ".status.containerStatuses[0]";
        (c.pod_field(pod, &format!("{status}.containerID")), c.pod_field(pod, &format!("{status}.restartCount")))
    }
    c.ok(&["run", "steady", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sleep", "3600"]);
    c.wait_for(&["get", "pod", "steady", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    let steady = container(&c, "steady");

    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: big}}
spec:
  containers:
  - {{name: main, image: {BUSYBOX}, imagePullPolicy: Never, resources: {{requests: {{memory: 64Ti}}}}}}
"#
    ));
    let scheduled = r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}"#;
    c.wait_for(&["get", "pod", "big", "-o", scheduled], READY, |s| s == "Unschedulable");
    let why = c.pod_field("big", r#".status.conditions[?(@.type=="PodScheduled")].message"#);
    assert!(why.contains("Insufficient memory"), "{why}");
    assert!(c.event_reasons("big").contains("FailedScheduling"));

    c.containerd.swap_cni_plugin(
        "bridge",
        Some(r#"[ "$CNI_COMMAND" = ADD ] || exec /usr/lib/cni/bridge; echo '{"cniVersion": "1.0.0", "ips": 7}'"#),
    );
    c.ok(&["run", "unlucky", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sleep", "3600"]);
    let events = "jsonpath={.items[*].reason}";
    let selector = "involvedObject.name=unlucky";
    c.wait_for(&["get", "events", "--field-selector", selector, "-o", events], READY, |s| {
        s.contains("FailedCreatePodSandBox")
    });
    let messages = c.ok(&["get", "events", "--field-selector", selector, "-o", "jsonpath={.items[*].message}"]);
    assert!(messages.contains("failed to create pod sandbox") && messages.contains("bridge"), "{messages}");
    assert_eq!(c.pod_field("unlucky", ".status.phase"), "Pending");
    assert_eq!(c.pod_field("unlucky", ".status.containerStatuses[0].state.waiting.reason"), "ContainerCreating");
    c.containerd.swap_cni_plugin("bridge", None);
    c.wait_for(&["get", "pod", "unlucky", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    assert_eq!(container(&c, "steady"), steady, "the running pod was not disturbed");
    let unlucky = container(&c, "unlucky");

    let ready =
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}"#;
    c.containerd.kill();
    let down = c.wait_for(&["get", "node", &c.node, "-o", ready], READY, |s| s.starts_with("False"));
    assert!(down.contains("container runtime is down"), "{down}");
    c.containerd.restart();
    c.wait_for(&["get", "node", &c.node, "-o", ready], READY, |s| s.starts_with("True"));
    // Several relists against the restarted runtime.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((container(&c, "steady"), container(&c, "unlucky")), (steady, unlucky), "no container was restarted");
    assert_eq!(c.ok(&["exec", "unlucky", "--", "echo", "still here"]), "still here\n");
    assert_eq!(c.pod_field("big", ".spec.nodeName"), "", "still waiting for a node that fits");
}

/// A privileged container runs (its sandbox is privileged too, which
/// containerd requires) with the administrative capabilities; an
/// unprivileged pod beside it keeps the default set.
#[test]
fn a_privileged_container_runs_with_the_admin_capabilities() {
    let Some(c) = Cluster::start() else { return };
    for (name, privileged) in [("privileged", true), ("plain", false)] {
        c.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    securityContext: {{privileged: {privileged}}}
"#
        ));
    }
    for name in ["privileged", "plain"] {
        c.wait_for(&["get", "pod", name, "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    }
    // The effective set, from "CapEff:\t000001ffffffffff".
    let caps = |pod: &str| {
        let line = c.ok(&["exec", pod, "--", "grep", "CapEff", "/proc/self/status"]);
        let hex = line.split(':').nth(1).unwrap_or_default().trim().to_string();
        u64::from_str_radix(&hex, 16).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    let (all, plain) = (caps("privileged"), caps("plain"));
    assert_eq!(all & (CAP_SYS_ADMIN | CAP_NET_ADMIN), CAP_SYS_ADMIN | CAP_NET_ADMIN, "{all:#x}");
    assert_eq!(plain & (CAP_SYS_ADMIN | CAP_NET_ADMIN), 0, "the plain pod keeps the default set: {plain:#x}");
}

/// A pod whose sandbox is slow to come up (its CNI ADD waits) holds up no
/// other pod: pods created after it get their sandboxes and run while it
/// waits, and it runs once its network is there.
#[test]
fn a_slow_sandbox_holds_up_no_other_pod() {
    let Some(c) = Cluster::start() else { return };
    let dir = c.containerd.dir.path();
    let (entered, release) = (dir.join("slow-add-entered"), dir.join("slow-add-release"));
    // containerd passes the pod's labels in CNI_ARGS in a random order
    // (a Go map), so the name is matched between separators on both sides.
    c.containerd.swap_cni_plugin(
        "bridge",
        Some(&format!(
            r#"if [ "$CNI_COMMAND" = ADD ]; then case ";$CNI_ARGS;" in *";K8S_POD_NAME=slow;"*)
  touch {entered}; i=0; while [ ! -e {release} ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done;; esac; fi
exec /usr/lib/cni/bridge"#,
            entered = entered.display(),
            release = release.display()
        )),
    );
    let run = |name: &str| c.ok(&["run", name, "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sleep", "3600"]);
    run("slow");
    let start = Instant::now();
    while !entered.exists() {
        assert!(start.elapsed() < READY, "the slow pod's CNI ADD never ran: {}", c.server_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let quick: Vec<String> = (0..4).map(|i| format!("quick{i}")).collect();
    for q in &quick {
        run(q);
    }
    for q in &quick {
        c.wait_for(&["get", "pod", q, "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    }
    assert!(!release.exists());
    assert_eq!(c.pod_field("slow", ".status.phase"), "Pending", "still waiting for its network");
    std::fs::write(&release, "").unwrap();
    c.wait_for(&["get", "pod", "slow", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    c.containerd.swap_cni_plugin("bridge", None);
}

/// A failing exec liveness probe restarts the container; an httpGet
/// readiness probe holds Ready back until it answers; a tcpSocket liveness
/// probe that keeps succeeding restarts nothing.
#[test]
fn probes_drive_restarts_and_readiness() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: liveness}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe: {{exec: {{command: [cat, /tmp/healthy]}}, periodSeconds: 1, failureThreshold: 2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: readiness}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /www; httpd -p 8080 -h /www; sleep 4; echo ok > /www/ready.html; sleep 3600"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /ready.html, port: http}}, periodSeconds: 1}}
    livenessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1, initialDelaySeconds: 1}}
"#
    ));
    c.wait_for(&["get", "pod", "readiness", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    assert_eq!(
        c.pod_field("readiness", ".status.containerStatuses[0].ready"),
        "false",
        "not ready before the page exists"
    );
    c.wait_for(
        &["get", "pod", "readiness", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"],
        READY,
        |s| s == "True",
    );
    c.wait_for(&["get", "pod", "liveness", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"], READY, |s| {
        s.parse::<u32>().is_ok_and(|n| n >= 1)
    });
    assert!(
        c.pod_field("liveness", ".status.containerStatuses[0].lastState.terminated.exitCode").parse::<i32>().unwrap()
            > 128
    );
    assert_eq!(c.pod_field("readiness", ".status.containerStatuses[0].restartCount"), "0");
    let reasons = c.event_reasons("liveness");
    assert!(reasons.contains("Unhealthy") && reasons.contains("Killing"), "{reasons}");
}

/// `kubectl logs` and `kubectl exec` through the API server's proxy to the
/// kubelet's HTTPS endpoint: whole logs, --tail, --timestamps, -c, -f
/// following new lines; exec's output, stderr and exit code (WebSocket v5).
#[test]
fn kubectl_logs_and_exec() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: talk}}
data: {{key: v1}}
---
apiVersion: v1
kind: Secret
metadata: {{name: talk-secret}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: talker, labels: {{tier: chat}}}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: cfg, configMap: {{name: talk}}}}
  - {{name: sec, secret: {{secretName: talk-secret}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "echo one; echo two >&2; echo three; while sleep 0.5; do echo tick; done"]
  - name: side
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "echo from the side; sleep 3600"]
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec, readOnly: true}}
    - {{name: info, mountPath: /info}}
"#
    ));
    c.wait_for(&["get", "pod", "talker", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    let all = c.wait_for(&["logs", "talker", "-c", "main"], READY, |s| s.contains("tick"));
    // stdout and stderr are separate pipes: their relative order is not kept (as upstream).
    assert!(["one\n", "two\n", "three\n", "tick\n"].iter().all(|l| all.contains(l)), "{all}");
    assert_eq!(c.ok(&["logs", "talker", "-c", "side"]), "from the side\n");
    assert_eq!(c.ok(&["logs", "talker", "-c", "main", "--tail", "1"]), "tick\n");
    let stamped = c.ok(&["logs", "talker", "-c", "side", "--timestamps"]);
    assert!(stamped.ends_with("Z from the side\n") && stamped.starts_with("20"), "{stamped}");
    let err = c.run(&["get", "--raw", "/api/v1/namespaces/default/pods/talker/log"]);
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("a container name must be specified for pod talker, choose one of: [main side]")
    );
    // -f: lines written after the request arrive.
    let mut follow = std::process::Command::new(&c.kubectl)
        .args(["logs", "-f", "talker", "-c", "main", "--tail", "1"])
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(lines.next().unwrap().unwrap(), "tick");
    }
    assert!(started.elapsed() >= Duration::from_millis(1000), "new lines were streamed as written");
    let _ = follow.kill();
    let _ = follow.wait();

    assert_eq!(c.ok(&["exec", "talker", "-c", "side", "--", "sh", "-c", "echo $((6 * 7)); hostname"]), "42\ntalker\n");
    let failed = c.run(&["exec", "talker", "-c", "side", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("oops"));
    // configMap, secret and downwardAPI volumes; a changed configMap reaches the running container.
    let read = |f: &str| c.ok(&["exec", "talker", "-c", "side", "--", "cat", f]);
    assert_eq!(read("/cfg/key"), "v1");
    assert_eq!(read("/sec/password"), "hunter2");
    assert_eq!(read("/info/labels"), "tier=\"chat\"");
    c.ok(&["patch", "configmap", "talk", "-p", r#"{"data":{"key":"v2"}}"#]);
    c.wait_for(&["exec", "talker", "-c", "side", "--", "cat", "/cfg/key"], READY, |s| s == "v2");
}

/// A container writing more than `--container-log-max-size` has its log
/// rotated: at most `--container-log-max-files` files stay on disk, and
/// `kubectl logs` (whole, `--tail`, `--limit-bytes`) still shows the
/// newest lines, in order, with no line lost inside what is kept.
#[test]
fn container_logs_are_rotated_and_bounded() {
    let Some(c) = Cluster::start_with(true, &["--container-log-max-size", "20000", "--container-log-max-files", "3"])
    else {
        return;
    };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, "i=0; while true; do for j in $(seq 500); do i=$((i+1)); echo line-$i; done; sleep 1; done"]
"#
    ));
    c.wait_for(&["get", "pod", "chatty", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    // Three rotations (one per 10 s check) push the first lines out.
    let all = c.wait_for(&["logs", "chatty"], Duration::from_secs(90), |s| !s.is_empty() && !s.starts_with("line-1\n"));
    let numbers: Vec<u64> =
        all.lines().map(|l| l.strip_prefix("line-").and_then(|n| n.parse().ok()).expect("a line-N")).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "lines in order, none missing in what is kept");
    let log_dir = std::fs::read_dir(c.kubelet_dir().join("logs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("default_chatty_"))
        .expect("the pod's log directory")
        .path()
        .join("main");
    let files: Vec<String> =
        std::fs::read_dir(&log_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(files.len() <= 3 && files.iter().any(|f| f.starts_with("0.log.")), "{files:?}");
    let last: u64 = c.ok(&["logs", "chatty", "--tail", "1"]).trim().strip_prefix("line-").unwrap().parse().unwrap();
    assert!(last >= *numbers.last().unwrap(), "the newest line: {last}");
    assert_eq!(c.ok(&["logs", "chatty", "--limit-bytes", "5"]), all[..5]);
}

/// Interactive `kubectl exec` and `kubectl attach` through the API server,
/// the kubelet and containerd's streaming server: piped stdin reaches the
/// command and its end closes the command's stdin (`cat`, `sh` reading a
/// script, 300 KB through `wc`); `-it` under a pseudo-terminal gets a
/// terminal of the client's size (the resize channel) and the exit code;
/// `attach -i` talks to a running container's stdin.
#[test]
fn interactive_exec_and_attach() {
    let Some(c) = Cluster::start() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echoer}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    stdin: true
    command: [sh, -c, 'while read line; do echo "got $line"; if [ "$line" = quit ]; then exit 0; fi; done']
"#
    ));
    for pod in ["shell", "echoer"] {
        c.wait_for(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    }
    // -i with a pipe: the end of kubectl's input closes the command's stdin, so `cat` ends.
    let out = c.run_with_stdin(&["exec", "-i", "shell", "--", "cat"], b"hello\nworld\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\n");
    let out = c.run_with_stdin(&["exec", "-i", "shell", "--", "sh"], b"echo $((1 + 2))\necho oops >&2\nexit 4\n");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"), "{out:?}");
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = c.run_with_stdin(&["exec", "-i", "shell", "--", "wc", "-c"], &big);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300000");
    let out = c.run_with_stdin(&["exec", "-i", "shell", "--", "md5sum"], &big);
    let local = std::process::Command::new("md5sum")
        .stdin(std::fs::File::open(write(&c, "big", &big)).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).split(' ').next(),
        String::from_utf8_lossy(&local.stdout).split(' ').next()
    );

    // -it on a pseudo-terminal of 33 rows and 101 columns: the remote terminal has that size.
    let (code, screen) =
        with_pty(&c, &["exec", "-it", "shell", "--", "sh"], "stty size; tty; echo $((40 + 2)); exit 3\r");
    assert_eq!(code, Some(3), "{screen}");
    assert!(screen.contains("33 101"), "the size came over the resize channel: {screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("42"), "{screen}");

    // attach -i: lines go to the running container's stdin, its answers come back.
    let mut attach = std::process::Command::new(&c.kubectl)
        .args(["attach", "-i", "echoer"])
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = attach.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(attach.stdout.take().unwrap()));
    // The first line may be written before the attachment is made: repeat it until it is answered.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.by_ref() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    loop {
        std::io::Write::write_all(&mut input, b"hello\n").unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            assert_eq!(l, "got hello");
            break;
        }
        assert!(started.elapsed() < READY, "attach never answered");
    }
    std::io::Write::write_all(&mut input, b"quit\n").unwrap();
    let status = attach.wait().unwrap();
    assert!(status.success(), "{status:?}");
    c.wait_for(&["get", "pod", "echoer", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Succeeded");
}

/// `kubectl port-forward` (kubectl ≥1.31 tunnels SPDY in a WebSocket to the
/// API server; the kubelet carries it to containerd's streaming server):
/// several connections through one session reach the pod's port, a
/// megabyte arrives whole, and a second forwarded port works alongside.
#[test]
fn kubectl_port_forward() {
    let Some(c) = Cluster::start() else { return };
    let serve = "mkdir -p /www && echo forwarded > /www/index.html && \
                 dd if=/dev/urandom of=/www/big bs=1024 count=1024 2>/dev/null && md5sum /www/big > /www/big.md5 && \
                 (nc -ll -p 9000 -e echo pong &) ; exec httpd -f -p 8080 -h /www";
    c.ok(&["run", "web", "--image", BUSYBOX, "--image-pull-policy=Never", "--", "sh", "-c", serve]);
    c.wait_for(&["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].ready}"], READY, |s| s == "true");
    c.wait_for(&["exec", "web", "--", "cat", "/www/big.md5"], READY, |s| s.contains("/www/big"));
    let mut pf = std::process::Command::new(&c.kubectl)
        .args(["port-forward", "pod/web", ":8080", ":9000"])
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 8080", then the same for [::1] and for 9000.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(pf.stdout.take().unwrap()));
    let mut local = std::collections::HashMap::new();
    while local.len() < 2 {
        let line = lines.next().expect("kubectl port-forward printed its ports").unwrap();
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            let (port, remote) = rest.split_once(" -> ").unwrap();
            local.insert(remote.to_string(), port.to_string());
        }
    }
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", &format!("http://127.0.0.1:{}/{path}", local["8080"])])
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {path}: {out:?}");
        out.stdout
    };
    for _ in 0..3 {
        assert_eq!(curl("index.html"), b"forwarded\n");
    }
    let big = curl("big");
    assert_eq!(big.len(), 1024 * 1024);
    let sum = std::process::Command::new("md5sum").arg(write(&c, "big", &big)).output().unwrap();
    let remote = String::from_utf8(curl("big.md5")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout).split(' ').next(),
        remote.split(' ').next(),
        "the megabyte arrived unchanged"
    );
    let mut tcp = std::net::TcpStream::connect(format!("127.0.0.1:{}", local["9000"])).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut tcp, &mut answer).unwrap();
    assert_eq!(answer, "pong\n");
    let _ = pf.kill();
    let _ = pf.wait();
}

fn write(c: &Cluster, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = c.data.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs kubectl on a new pseudo-terminal (33×101), types `input` once the
/// remote shell prompts, and returns kubectl's exit code and all it printed.
fn with_pty(c: &Cluster, args: &[&str], input: &str) -> (Option<i32>, String) {
    use std::io::{Read as _, Write as _};
    let size = nix::pty::Winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = |fd: &std::os::fd::OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
    let mut child = std::process::Command::new(&c.kubectl)
        .args(args)
        .env("KUBECONFIG", c.data.path().join("admin.kubeconfig"))
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let seen = screen.clone();
    // Reading ends with EIO once kubectl, the last holder of the terminal, has gone.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                return;
            }
            seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let started = std::time::Instant::now();
    while !screen.lock().unwrap().contains("# ") {
        assert!(started.elapsed() < READY, "no prompt: {}", screen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    master.write_all(input.as_bytes()).unwrap();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < READY, "kubectl did not end: {}", screen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(200));
    let s = screen.lock().unwrap().clone();
    (code, s)
}

/// Air gap: containerd starts without the busybox image; the kubelet
/// imports it from --image-dir, so an IfNotPresent pod runs without a
/// registry. Image faults show upstream's reasons: a missing image with
/// pull policy Never is ErrImageNeverPull, an unreachable registry
/// ErrImagePull then ImagePullBackOff; the other pods are not disturbed.
/// Then a real pull from a local registry, and OOMKilled under a memory limit.
#[test]
fn air_gapped_images_and_image_faults() {
    let dir = tempfile::tempdir().unwrap();
    let Some(archive) = kubelet_support::available().then(|| kubelet_support::images()[0].clone()) else { return };
    std::fs::copy(&archive, dir.path().join("busybox.tar")).unwrap();
    std::fs::write(dir.path().join("broken.tar"), b"not an archive").unwrap();
    let Some(c) = Cluster::start_with(false, &["--image-dir", dir.path().to_str().unwrap()]) else { return };
    c.ok(&["run", "offline", "--image", BUSYBOX, "--image-pull-policy=IfNotPresent", "--", "sleep", "3600"]);
    c.ok(&["run", "never", "--image", "example.invalid/absent:1", "--image-pull-policy=Never", "--", "true"]);
    c.ok(&["run", "unreachable", "--image", "127.0.0.1:9/nothing:1", "--image-pull-policy=Always", "--", "true"]);
    c.wait_for(&["get", "pod", "offline", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    let reason = "jsonpath={.status.containerStatuses[0].state.waiting.reason}";
    c.wait_for(&["get", "pod", "never", "-o", reason], READY, |s| s == "ErrImageNeverPull");
    // ErrImagePull after a failed pull, ImagePullBackOff while waiting for the next.
    c.wait_for(&["get", "pod", "unreachable", "-o", reason], READY, |s| s == "ErrImagePull" || s == "ImagePullBackOff");
    c.wait_for(&["get", "pod", "unreachable", "-o", reason], READY, |s| s == "ImagePullBackOff");
    assert!(
        c.pod_field("unreachable", ".status.containerStatuses[0].state.waiting.message")
            .contains("127.0.0.1:9/nothing:1")
    );
    assert_eq!(c.pod_field("offline", ".status.containerStatuses[0].restartCount"), "0");
    assert!(c.server_log().contains("broken.tar"), "the broken archive is reported");
    assert!(c.event_reasons("unreachable").contains("Failed"));
    assert!(c.event_reasons("never").contains("ErrImageNeverPull"));
}

/// imagePullSecrets: a registry on 127.0.0.1 that wants a password
/// (Debian's docker-registry with htpasswd). A pod with a
/// `kubernetes.io/dockerconfigjson` Secret made by `kubectl create secret
/// docker-registry` pulls and runs; without it, or with a wrong password,
/// the pull is refused (ErrImagePull, then ImagePullBackOff); a missing
/// Secret is reported as an event.
#[test]
fn image_pull_secrets_authenticate_to_a_registry() {
    use kubelet_support::{REGISTRY_PASSWORD, REGISTRY_USER, Registry};
    let Some(c) = Cluster::start() else { return };
    let registry = Registry::start_with_auth();
    let image = registry.push_busybox("private/busybox:1");
    let server = format!("--docker-server={}", registry.address);
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &server,
        &format!("--docker-username={REGISTRY_USER}"),
        &format!("--docker-password={REGISTRY_PASSWORD}"),
    ]);
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "badcred",
        &server,
        "--docker-username=alice",
        "--docker-password=nope",
    ]);
    assert_eq!(c.ok(&["get", "secret", "regcred", "-o", "jsonpath={.type}"]), "kubernetes.io/dockerconfigjson");
    let pod = |name: &str, secrets: &[&str]| {
        let list: Vec<String> = secrets.iter().map(|s| format!("{{name: {s}}}")).collect();
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [{}]
  containers:
  - {{name: main, image: "{image}", imagePullPolicy: Always, command: [sleep, "3600"]}}
"#,
            list.join(", ")
        )
    };
    // A wrong credential first, then the right one: each is tried in turn.
    c.apply(&pod("private", &["missing", "badcred", "regcred"]));
    c.apply(&pod("anonymous", &[]));
    c.apply(&pod("wrong", &["badcred"]));
    c.wait_for(&["get", "pod", "private", "-o", "jsonpath={.status.phase}"], READY, |s| s == "Running");
    let reason = "jsonpath={.status.containerStatuses[0].state.waiting.reason}";
    for name in ["anonymous", "wrong"] {
        c.wait_for(&["get", "pod", name, "-o", reason], READY, |s| s == "ImagePullBackOff");
        let message = c.pod_field(name, ".status.containerStatuses[0].state.waiting.message");
        assert!(message.contains(&image), "{name}: {message}");
    }
    assert!(
        c.pod_field("anonymous", ".status.containerStatuses[0].state.waiting.message").contains("Back-off pulling")
    );
    let reasons = c.event_reasons("private");
    assert!(reasons.contains("FailedToRetrieveImagePullSecret") && reasons.contains("Pulled"), "{reasons}");
    assert_eq!(c.ok(&["exec", "private", "--", "echo", "pulled with a password"]), "pulled with a password\n");
}

/// A worker: `orchestrator kubelet --server` joined by token in its own process talks
/// to `orchestrator server` over HTTPS (lists, watches, status writes,
/// lease), serves a self-signed endpoint the API server proxies logs and
/// exec (with stdin) to, and cleans up deleted pods.
#[test]
fn worker_kubelet_over_https() {
    let Some(c) = Cluster::start_split() else { return };
    assert_eq!(
        c.ok(&["get", "lease", "-n", "kube-node-lease", &c.node, "-o", "jsonpath={.spec.holderIdentity}"]),
        c.node
    );
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: worker}}
data: {{greeting: "hello worker"}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 1
      volumes: [{{name: cfg, configMap: {{name: worker}}}}]
      containers:
      - name: main
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, "cat /cfg/greeting; echo; sleep 3600"]
        env: [{{name: GREETING, valueFrom: {{configMapKeyRef: {{name: worker, key: greeting}}}}}}]
        volumeMounts: [{{name: cfg, mountPath: /cfg}}]
"#
    ));
    c.wait_for(&["get", "deployment", "echo", "-o", "jsonpath={.status.readyReplicas}"], READY, |s| s == "2");
    let pods = c.ok(&["get", "pods", "-l", "app=echo", "-o", "jsonpath={.items[*].metadata.name}"]);
    let pod = pods.split_whitespace().next().unwrap().to_string();
    assert_eq!(c.wait_for(&["logs", &pod], READY, |s| !s.is_empty()), "hello worker\n");
    assert_eq!(c.ok(&["exec", &pod, "--", "sh", "-c", "echo $GREETING"]), "hello worker\n");
    let piped = c.run_with_stdin(&["exec", "-i", &pod, "--", "cat"], b"through the worker\n");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "through the worker\n", "{piped:?}");
    let uid = c.pod_field(&pod, ".metadata.uid");
    c.ok(&["delete", "pod", &pod, "--wait=true"]);
    assert!(!c.containerd.sandboxes().iter().any(|(_, u, _)| *u == uid));
    c.wait_for(&["get", "deployment", "echo", "-o", "jsonpath={.status.readyReplicas}"], READY, |s| s == "2");
}
