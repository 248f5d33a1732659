//! Three "nodes" in network namespaces of their own, not all on one layer
//! 2, each with a CNI-like bridge and "pods" (network namespaces with a
//! veth into it): for the overlay test and the pod-network benchmark.
//!
//! ```text
//!   pa, pa2 ─ br0 [node a 10.1.0.1] ─┐                 ┌─ [node b 10.2.0.1] br0 ─ pb
//!                                      lan1 [router] ──┘
//!        pc ─ br0 [node c 10.1.0.3] ─┘  10.1.0.254/24   10.2.0.254/24
//! ```
//! a and c share the router's bridge `lan1` (one layer 2); b is a routed
//! hop away. Pod CIDRs: a 10.244.1.0/24, b 10.244.2.0/24, c 10.244.3.0/24;
//! each node's first pod is .2 (a's second, `pa2`, .3).

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use orchestrator_node_net::overlay::Device;
use orchestrator_node_net::routes::{self, Hop, Mode};

pub fn sh(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (scripts/setup-debian.sh installs it)"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside the network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

/// Runs `f` in `ns` on a thread of its own, for ever (a server).
pub fn spawn_in_ns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    });
}

pub struct NodeSpec {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub cidr: &'static str,
}

pub const A: NodeSpec = NodeSpec { name: "a", ip: Ipv4Addr::new(10, 1, 0, 1), cidr: "10.244.1.0/24" };
pub const B: NodeSpec = NodeSpec { name: "b", ip: Ipv4Addr::new(10, 2, 0, 1), cidr: "10.244.2.0/24" };
pub const C: NodeSpec = NodeSpec { name: "c", ip: Ipv4Addr::new(10, 1, 0, 3), cidr: "10.244.3.0/24" };

/// A pod's address: the `n`th of the node's pod CIDR.
pub fn pod_ip(node: &NodeSpec, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = node.cidr.parse::<ipnet::Ipv4Net>().unwrap().network().octets();
    Ipv4Addr::new(a, b, c, n)
}

/// The Node object of `n`, as the API server has it, at `ip`.
pub fn node_at(n: &NodeSpec, ip: Ipv4Addr) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": n.name},
        "spec": {"podCIDR": n.cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": n.name}]},
    }))
    .unwrap()
}

pub fn node(n: &NodeSpec) -> Node {
    node_at(n, n.ip)
}

/// The namespaces; deleted on drop.
pub struct Lab {
    prefix: String,
    names: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Lab {
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    fn add(&mut self, short: &str) -> String {
        let name = self.ns(short);
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        self.names.push(name.clone());
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Builds the topology (see the module's documentation); `tag` keeps
    /// the namespaces of concurrent tests apart.
    pub fn new(tag: &str) -> Lab {
        assert!(nix::unistd::geteuid().is_root(), "network namespaces need root (the overlay test runs as root in CI)");
        let mut lab = Lab { prefix: format!("plv{}{tag}-", std::process::id() % 100_000), names: Vec::new() };
        let r = lab.add("r");
        sh("ip", &["netns", "exec", &r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh("ip", &["-n", &r, "link", "add", "lan1", "type", "bridge"]);
        sh("ip", &["-n", &r, "addr", "add", "10.1.0.254/24", "dev", "lan1"]);
        sh("ip", &["-n", &r, "link", "set", "lan1", "up"]);
        for (n, port, gw) in [(&A, "to-a", "10.1.0.254"), (&B, "to-b", "10.2.0.254"), (&C, "to-c", "10.1.0.254")] {
            let ns = lab.add(n.name);
            sh("ip", &["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            sh("ip", &["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &r]);
            sh("ip", &["-n", &ns, "addr", "add", &format!("{}/24", n.ip), "dev", "eth0"]);
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            sh("ip", &["-n", &ns, "route", "add", "default", "via", gw]);
            if n.name == "b" {
                sh("ip", &["-n", &r, "addr", "add", "10.2.0.254/24", "dev", port]);
            } else {
                sh("ip", &["-n", &r, "link", "set", port, "master", "lan1"]);
            }
            sh("ip", &["-n", &r, "link", "set", port, "up"]);
            // The node's CNI bridge, its gateway the pod CIDR's first address.
            sh("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
            sh("ip", &["-n", &ns, "addr", "add", &format!("{}/24", pod_ip(n, 1)), "dev", "br0"]);
            sh("ip", &["-n", &ns, "link", "set", "br0", "up"]);
            let pods: &[(&str, u8)] = if n.name == "a" { &[("pa", 2), ("pa2", 3)] } else { &[("p", 2)] };
            for (short, host) in pods {
                let short = if *short == "p" { format!("p{}", n.name) } else { short.to_string() };
                let pod = lab.add(&short);
                let veth = format!("veth{short}");
                sh("ip", &["-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", &veth, "netns", &ns]);
                sh("ip", &["-n", &pod, "addr", "add", &format!("{}/24", pod_ip(n, *host)), "dev", "eth0"]);
                sh("ip", &["-n", &pod, "link", "set", "eth0", "up"]);
                sh("ip", &["-n", &pod, "route", "add", "default", "via", &pod_ip(n, 1).to_string()]);
                sh("ip", &["-n", &ns, "link", "set", &veth, "master", "br0"]);
                sh("ip", &["-n", &ns, "link", "set", &veth, "up"]);
            }
        }
        lab
    }

    /// One sync of node `n`'s dataplane from `nodes`, in its namespace.
    pub fn program(
        &self,
        n: &NodeSpec,
        nodes: Vec<Node>,
        mode: Mode,
    ) -> std::collections::BTreeMap<ipnet::Ipv4Net, Hop> {
        let device = Device { local: n.ip, own: n.cidr.parse().unwrap() };
        let me = n.name;
        in_ns(&self.ns(n.name), move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(routes::program(&nodes, me, mode, device)).unwrap_or_else(|e| panic!("program node {me}: {e}"))
        })
    }

    /// `ip`/`bridge` in node `n`'s namespace.
    pub fn on(&self, n: &NodeSpec, program: &str, args: &[&str]) -> String {
        let ns = self.ns(n.name);
        sh(program, &[&["-n", ns.as_str()][..], args].concat())
    }
}

/// A TCP server in the pod `ns` on `port` that answers every connection
/// with the address it came from.
pub fn whoami_server(ns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            let mut s = s;
            let peer = s.peer_addr().map(|p| p.ip().to_string()).unwrap_or_default();
            let _ = s.write_all(peer.as_bytes());
        }
    });
    rx.recv().unwrap();
}

/// From the pod `ns`: connects to `to`, returns what the server said (the
/// address it saw) or the error.
pub fn whoami(ns: &str, to: SocketAddr) -> Result<String, String> {
    whoami_within(ns, to, Duration::from_secs(3))
}

/// [`whoami`] giving up on the connection after `patience`.
pub fn whoami_within(ns: &str, to: SocketAddr, patience: Duration) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, patience).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read from {to}: {e}"))?;
        Ok(out)
    })
}
