//! Pod-to-pod round trip and throughput within one node and across nodes,
//! host-gw against VXLAN, on the real kernel devices `routes::program`
//! makes, in network namespaces (root; the topology of
//! `tests/support`: nodes a and c on one LAN, b behind a router, each
//! with a CNI-like bridge and veth "pods"). Not a QEMU guest: the same
//! kernel dataplane (bridge, veth, routes, vxlan device, FDB) without the
//! virtual NIC, so the figures compare the paths, not absolute hardware.
//!
//! `cargo bench -p orchestrator-node-net --bench pod_network --profile dev` (or
//! `bench/pod-network.sh`). Prints `figure: NAME VALUE` lines; fails (no
//! figure) when a path does not carry traffic or a figure is not finite.
//! `PLINTH_BENCH_RTT_N` round trips per path (default 5000),
//! `PLINTH_BENCH_BYTES` bytes per throughput run (default 1 GiB),
//! `PLINTH_BENCH_RUNS` runs per path (default 3; the medians are printed).
//! Each run also checks which way the bytes went: through node a's vxlan
//! device exactly on the VXLAN paths.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use orchestrator_node_net::routes::{Hop, Mode};
use support::{A, B, C, Lab, in_ns, node, pod_ip, spawn_in_ns};

const ECHO: u16 = 7101;
const SINK: u16 = 7102;
const CHUNK: usize = 1 << 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// An echo server (64-byte messages) and a sink (reads to EOF, answers
/// with the byte count) in the pod `ns`.
fn servers(ns: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    spawn_in_ns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", ECHO)).expect("bind the echo server");
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                s.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    spawn_in_ns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", SINK)).expect("bind the sink");
        tx2.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes());
            });
        }
    });
    rx.recv().unwrap();
    rx.recv().unwrap();
}

/// The bytes node a's vxlan device has sent.
fn vxlan_tx_bytes(lab: &Lab) -> u64 {
    let out = lab.on(&A, "ip", &["-s", "-j", "link", "show", orchestrator_node_net::overlay::DEVICE]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap_or_else(|| panic!("no tx bytes in {out}"))
}

struct Figures {
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    gbit_s: f64,
}

/// From the pod `ns` to the pod at `to`: `n` round trips of 64 bytes,
/// then `bytes` one way.
fn measure(ns: &str, to: std::net::Ipv4Addr, n: usize, bytes: u64) -> Result<Figures, String> {
    in_ns(ns, move || {
        let connect = |port| {
            let addr = SocketAddr::new(to.into(), port);
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))
        };
        let mut s = connect(ECHO)?;
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [7u8; 64];
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            s.write_all(&buf).map_err(|e| format!("echo to {to}: {e}"))?;
            s.read_exact(&mut buf).map_err(|e| format!("echo from {to}: {e}"))?;
            // The first tenth warms the path up (neighbours, caches).
            if i >= n / 10 {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        rtts.sort_by(f64::total_cmp);
        let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
        let mut s = connect(SINK)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let chunk = vec![1u8; CHUNK];
        let t = Instant::now();
        let mut sent = 0u64;
        while sent < bytes {
            let k = (bytes - sent).min(CHUNK as u64) as usize;
            s.write_all(&chunk[..k]).map_err(|e| format!("send to {to}: {e}"))?;
            sent += k as u64;
        }
        s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        let mut got = [0u8; 8];
        s.read_exact(&mut got).map_err(|e| format!("the sink's count from {to}: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let got = u64::from_be_bytes(got);
        if got != bytes {
            return Err(format!("{to} received {got} of {bytes} bytes"));
        }
        Ok(Figures { rtt_p50_us: pct(0.5), rtt_p99_us: pct(0.99), gbit_s: bytes as f64 * 8.0 / secs / 1e9 })
    })
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let n = env("PLINTH_BENCH_RTT_N", 5000) as usize;
    let bytes = env("PLINTH_BENCH_BYTES", 1 << 30);
    let runs = env("PLINTH_BENCH_RUNS", 3) as usize;
    assert!(
        n >= 100 && bytes > 0 && runs > 0,
        "PLINTH_BENCH_RTT_N ≥ 100, PLINTH_BENCH_BYTES > 0, PLINTH_BENCH_RUNS > 0"
    );
    let lab = Lab::new("b");
    let all = || vec![node(&A), node(&B), node(&C)];
    for p in ["pa2", "pb", "pc"] {
        servers(&lab.ns(p));
    }
    let mut rows: Vec<(&str, Figures)> = Vec::new();
    let mut run = |name: &'static str, to: std::net::Ipv4Addr, encapsulated: bool| {
        let mut all = Vec::new();
        for _ in 0..runs {
            let before = vxlan_tx_bytes(&lab);
            let f = measure(&lab.ns("pa"), to, n, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let through = vxlan_tx_bytes(&lab) - before;
            if encapsulated {
                assert!(through >= bytes, "{name}: only {through} bytes went out of node a's vxlan device");
            } else {
                assert!(through < bytes / 100, "{name}: {through} bytes went out of node a's vxlan device");
            }
            all.push(f);
        }
        let median = |get: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = all.iter().map(get).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let f = Figures {
            rtt_p50_us: median(|f| f.rtt_p50_us),
            rtt_p99_us: median(|f| f.rtt_p99_us),
            gbit_s: median(|f| f.gbit_s),
        };
        for (what, v) in [("rtt_p50_us", f.rtt_p50_us), ("rtt_p99_us", f.rtt_p99_us), ("gbit_s", f.gbit_s)] {
            assert!(v.is_finite() && v > 0.0, "{name} {what} = {v}: not a figure");
            println!("figure: pod_network.{name}.{what} {v:.2}");
        }
        rows.push((name, f));
    };

    // auto: a–c directly (one LAN), a–b over VXLAN (behind the router).
    let plan = lab.program(&A, all(), Mode::Auto);
    assert_eq!(plan.values().filter(|h| matches!(h, Hop::Vxlan(_))).count(), 1, "{plan:?}");
    lab.program(&B, all(), Mode::Auto);
    lab.program(&C, all(), Mode::Auto);
    run("same_node", pod_ip(&A, 3), false);
    run("host_gw_lan", pod_ip(&C, 2), false);
    run("vxlan_routed", pod_ip(&B, 2), true);
    // vxlan forced between a and c: the same LAN, encapsulated.
    let plan = lab.program(&A, all(), Mode::Vxlan);
    assert!(plan.values().all(|h| matches!(h, Hop::Vxlan(_))), "{plan:?}");
    lab.program(&C, all(), Mode::Vxlan);
    run("vxlan_lan", pod_ip(&C, 2), true);

    println!(
        "\npod to pod from node a's pod (medians of {runs} runs of {n} round trips of 64 B and {} MiB one way):",
        bytes >> 20
    );
    println!("  {:<14} {:>10} {:>10} {:>10}", "path", "RTT p50 µs", "p99 µs", "Gbit/s");
    for (name, f) in &rows {
        println!("  {name:<14} {:>10.1} {:>10.1} {:>10.2}", f.rtt_p50_us, f.rtt_p99_us, f.gbit_s);
    }
}
