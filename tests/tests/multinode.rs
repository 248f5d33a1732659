//! Two nodes in QEMU on one guest-to-guest network: a control plane and a
//! worker booted from the same image, each with DHCP on eth0 (QEMU's user
//! network, apid and the API forwarded to 127.0.0.1) and a static address
//! on eth1 (a multicast socket netdev shared by both). One test function
//! boots the guests once and checks, in order (each step printed as
//! `multinode step: …`): the worker joins by token with no CA key in its
//! config; both Nodes are Ready with distinct pod CIDRs and their eth1
//! addresses as InternalIP; a pod on each node runs there; the worker's pod
//! reaches the control plane's by pod IP with its own address as the
//! source (not masqueraded), and the reverse; a ClusterIP Service backed
//! by the control plane's pod answers from a pod on each node, and one
//! backed by the worker's pod answers from the control plane's pod; the
//! worker's cluster DNS resolves the Service's name to its cluster IP and
//! the name answers; the Service's node port answers on both nodes'
//! addresses. A failed cross-node step comes with each node's addresses,
//! routes, sysctls and nat rules and its orchestrator's route and proxy
//! log lines. The three-node scenario (a worker powered off and on again)
//! is `bench/cluster.sh`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_qemu::ClusterNet;
use plinth_tests::cluster::{BOOT, ROLLOUT, build_busybox_image, tail};
use plinth_tests::multinode::{
    TOKEN, apply, diagnose, exec_ok, fetch, gen_config, node_ready, power_on, wait_configured,
};
use plinth_tests::{Operator, kubectl, osctl, wait_for};

const CP_ADDR: &str = "10.5.0.1";
const WORKER_ADDR: &str = "10.5.0.2";

/// A web server pod named `name` (label `app: name`) on `node`, answering
/// `greeting` at `/` and, at `/cgi-bin/ip`, the address its request came
/// from.
fn web_pod(name: &str, node: &str, greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: docker.io/library/busybox:plinth
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /tmp/www/cgi-bin; echo {greeting} > /tmp/www/index.html; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"$REMOTE_ADDR\"\\n' > /tmp/www/cgi-bin/ip; chmod +x /tmp/www/cgi-bin/ip; exec httpd -f -p 8080 -h /tmp/www"]
    ports:
    - containerPort: 8080
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 2
"#
    )
}

/// A web server on each node (`server` on the control plane, `client` on
/// the worker; each is the other's client), a NodePort Service in front of
/// the control plane's and a ClusterIP Service in front of the worker's.
fn pods() -> String {
    let node_port = r#"apiVersion: v1
kind: Service
metadata:
  name: server
spec:
  type: NodePort
  selector: {app: server}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30080}
"#;
    let cluster_ip = r#"apiVersion: v1
kind: Service
metadata:
  name: worker
spec:
  selector: {app: client}
  ports:
  - {port: 80, targetPort: 8080}
"#;
    [
        web_pod("server", "cp", "hello from the control plane"),
        node_port.to_string(),
        web_pod("client", "w1", "hello from the worker"),
        cluster_ip.to_string(),
    ]
    .join("---\n")
}

/// Prints a step with the time since the test began.
fn step(text: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("multinode step ({t} s): {text}");
}

#[test]
fn a_worker_joins_by_token_and_pods_services_dns_and_node_ports_work_across_nodes() -> anyhow::Result<()> {
    step("building the image");
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let image = build_busybox_image(&op, w)?;

    let cp_toml = w.join("cp.toml");
    let cp_cfg = gen_config(
        &op,
        &cp_toml,
        &["--role", "controlplane", "--hostname", "cp", "--cluster-address", &format!("{CP_ADDR}/24")],
    )?;
    assert_eq!(cp_cfg.kube_endpoint().as_deref(), Some(&*format!("https://{CP_ADDR}:6443")));
    let worker_toml = w.join("w1.toml");
    let endpoint = format!("https://{CP_ADDR}:6443");
    let worker_cfg = gen_config(
        &op,
        &worker_toml,
        &[
            "--role",
            "worker",
            "--hostname",
            "w1",
            "--cluster-address",
            &format!("{WORKER_ADDR}/24"),
            "--endpoint",
            &endpoint,
        ],
    )?;
    // The worker joins by token: no CA key of either kind in its config.
    assert!(worker_cfg.cluster.ca_key.is_none() && worker_cfg.api.ca_key.is_none());
    let worker_text = std::fs::read_to_string(&worker_toml)?;
    for ca_key in ["ca.key", "kube-ca.key"] {
        let key = std::fs::read_to_string(op.path(ca_key))?;
        assert!(!worker_text.contains(key.trim()), "{ca_key} is in the worker's config");
    }
    assert_eq!(worker_cfg.cluster.token.as_deref(), Some(TOKEN));

    step("powering on both VMs; the control plane's config first");
    let net = ClusterNet::new()?;
    let mut cp = power_on(&image, w, "cp", net)?;
    // The worker boots into maintenance mode meanwhile.
    let mut worker = power_on(&image, w, "w1", net)?;
    apply(&op, &mut cp, &cp_toml)?;
    wait_configured(&op, &mut cp)?;
    let kubeconfig = w.join("kubeconfig");
    let kc = kubeconfig.to_str().context("utf-8")?.to_string();
    let cp_api = cp.api_addr();
    wait_for("the kubeconfig", BOOT, || {
        osctl(&op.osctlconfig(), &["-n", &cp_api, "kubeconfig", "--server", &cp.kube_url(), "--out", &kc]).ok().ok()
    })
    .with_context(|| tail(&cp.serial_log()))?;
    let ready = |node: &str| node_ready(&kubeconfig, node);
    wait_for("node cp Ready", BOOT, || ready("cp")).with_context(|| tail(&cp.serial_log()))?;

    step("the worker joins by token");
    apply(&op, &mut worker, &worker_toml)?;
    wait_configured(&op, &mut worker)?;
    wait_for("node w1 Ready", BOOT, || ready("w1")).with_context(|| {
        format!("worker: {}\ncontrol plane: {}", tail(&worker.serial_log()), tail(&cp.serial_log()))
    })?;

    // Both Ready, distinct pod CIDRs, their cluster-network addresses as InternalIP.
    let nodes = kubectl(&kubeconfig, &["get", "nodes", "-o", "json"])?.ok()?.json()?;
    let mut seen = Vec::new();
    for n in nodes["items"].as_array().context("items")? {
        let name = n["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let cidr = n["spec"]["podCIDR"].as_str().unwrap_or_default().to_string();
        let internal = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default()
            .to_string();
        seen.push((name, cidr, internal));
    }
    seen.sort();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].2.as_str()), ("cp", CP_ADDR), "{seen:?}");
    assert_eq!((seen[1].0.as_str(), seen[1].2.as_str()), ("w1", WORKER_ADDR), "{seen:?}");
    assert!(!seen[0].1.is_empty() && seen[0].1 != seen[1].1, "distinct pod CIDRs: {seen:?}");

    let manifest = w.join("pods.yaml");
    std::fs::write(&manifest, pods())?;
    kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().context("utf-8")?])?.ok()?;
    for pod in ["pod/server", "pod/client"] {
        kubectl(&kubeconfig, &["wait", "--for=condition=Ready", pod, ROLLOUT])?.ok().with_context(|| {
            format!("{pod}: worker: {}\ncontrol plane: {}", tail(&worker.serial_log()), tail(&cp.serial_log()))
        })?;
    }
    let get = |what: &str, jsonpath: &str| -> anyhow::Result<String> {
        Ok(kubectl(&kubeconfig, &["get", what, "-o", &format!("jsonpath={jsonpath}")])?.ok()?.stdout)
    };
    let (server_ip, client_ip) = (get("pod/server", "{.status.podIP}")?, get("pod/client", "{.status.podIP}")?);
    let on = |pod: &str| get(&format!("pod/{pod}"), "{.spec.nodeName}");
    assert_eq!((on("server")?.as_str(), on("client")?.as_str()), ("cp", "w1"));
    let server_svc = get("service/server", "{.spec.clusterIP}")?;
    let worker_svc = get("service/worker", "{.spec.clusterIP}")?;

    let across = || -> anyhow::Result<()> {
        // httpd listens on `::`, so an IPv4 peer reads as `[::ffff:a.b.c.d]`.
        let peer =
            |s: String| s.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:").to_string();
        step("the worker's pod reaches the control plane's by pod IP, its own address the source");
        let url = format!("http://{server_ip}:8080/cgi-bin/ip");
        let seen = peer(fetch(&kubeconfig, "client", &url, "client (w1) → server (cp) by pod IP")?);
        anyhow::ensure!(seen == client_ip, "w1 → cp by pod IP: the server saw {seen}, not {client_ip} (masqueraded?)");
        step("the control plane's pod reaches the worker's by pod IP, its own address the source");
        let url = format!("http://{client_ip}:8080/cgi-bin/ip");
        let seen = peer(fetch(&kubeconfig, "server", &url, "server (cp) → client (w1) by pod IP")?);
        anyhow::ensure!(seen == server_ip, "cp → w1 by pod IP: the worker's pod saw {seen}, not {server_ip}");

        step("a ClusterIP Service answers from both nodes' pods");
        let cp_page = "hello from the control plane";
        let url = format!("http://{server_svc}/");
        let page = fetch(&kubeconfig, "client", &url, "client (w1) → Service server (cp's pod)")?;
        anyhow::ensure!(page == cp_page, "w1 → {url}: {page:?}");
        // The control plane's pod through its own Service: a hairpin.
        let page = fetch(&kubeconfig, "server", &url, "server (cp) → Service server (itself)")?;
        anyhow::ensure!(page == cp_page, "cp → {url} (hairpin): {page:?}");
        let url = format!("http://{worker_svc}/");
        let page = fetch(&kubeconfig, "server", &url, "server (cp) → Service worker (w1's pod)")?;
        anyhow::ensure!(page == "hello from the worker", "cp → {url}: {page:?}");

        step("the worker's cluster DNS resolves the Service's name, and the name answers");
        let name = "server.default.svc.cluster.local";
        let found = exec_ok(&kubeconfig, "client", &["nslookup", name], "nslookup on w1")?;
        anyhow::ensure!(found.contains(&format!("Address: {server_svc}")), "nslookup {name} on w1: {found}");
        let page = fetch(&kubeconfig, "client", &format!("http://{name}/"), "client (w1) → server by DNS name")?;
        anyhow::ensure!(page == cp_page, "w1 → {name}: {page:?}");

        step("the node port answers on both nodes' addresses");
        for addr in [CP_ADDR, WORKER_ADDR] {
            let url = format!("http://{addr}:30080/");
            let page = fetch(&kubeconfig, "client", &url, &format!("client (w1) → node port on {addr}"))?;
            anyhow::ensure!(page == cp_page, "{url}: {page:?}");
        }
        Ok(())
    };
    if let Err(e) = across() {
        return Err(e.context(diagnose(&op, &kubeconfig, w, &[&cp, &worker])));
    }

    step("osctl reset of the worker deletes its Node, and its certificate requests go with it");
    let csrs = || -> anyhow::Result<Vec<String>> {
        let all = kubectl(&kubeconfig, &["get", "csr", "-o", "json"])?.ok()?.json()?;
        let mut owned: Vec<String> = all["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let refs = c["metadata"]["ownerReferences"].as_array();
                refs.into_iter().flatten().any(|r| r["kind"] == "Node" && r["name"] == "w1")
            })
            .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        owned.sort();
        Ok(owned)
    };
    let mut owned = Vec::new();
    // The join's request is owned by the Node once the controller has seen both.
    wait_for("w1's certificate requests owned by its Node", Duration::from_secs(60), || {
        owned = csrs().ok()?;
        (!owned.is_empty()).then_some(())
    })?;
    let reset = osctl(&op.osctlconfig(), &["-n", &worker.api_addr(), "reset", "--yes"]).ok()?;
    assert!(reset.stdout.contains("Node deleted"), "{reset:?}");
    let gone = kubectl(&kubeconfig, &["get", "node", "w1"])?;
    assert!(gone.code != 0 && gone.stderr.contains("NotFound"), "node w1 after the reset: {gone:?}");
    let mut left = owned.clone();
    wait_for("w1's certificate requests deleted with its Node", Duration::from_secs(60), || {
        left = csrs().ok()?;
        let names = kubectl(&kubeconfig, &["get", "csr", "-o", "name"]).ok()?.ok().ok()?.stdout;
        let any_left = owned
            .iter()
            .any(|c| names.lines().any(|l| l == format!("certificatesigningrequest.certificates.k8s.io/{c}")));
        (!any_left).then_some(())
    })
    .with_context(|| format!("before the reset {owned:?}, still owned {left:?}"))?;
    step("done");
    Ok(())
}
