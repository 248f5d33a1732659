//! init's DHCP lease keeper against a real DHCP server (busybox udhcpd) on
//! a veth pair between two network namespaces this test makes: a server
//! that starts after the node, then hands out another address, then goes
//! away, is followed — the address comes, is renewed past its lease time,
//! changes, and is removed when the lease ends. Needs root, iproute2 and
//! busybox (scripts/setup-debian.sh installs busybox-static); under CI=true
//! a missing one fails the test instead of skipping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use init::net::{DhcpLink, keep_lease};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; removed (with the pair) on drop.
struct Netns {
    client: String,
    server: String,
    iface: String,
    server_iface: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn usable() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (network namespaces)".into());
    }
    for tool in ["ip", "busybox"] {
        if Command::new(tool).arg("--help").output().is_err() {
            return Err(format!("needs {tool} (scripts/setup-debian.sh installs it)"));
        }
    }
    Ok(())
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// udhcpd handing out exactly `addr` for `lease` seconds.
fn serve(n: &Netns, dir: &Path, addr: &str, lease: u32) -> Server {
    let leases = dir.join("udhcpd.leases");
    let _ = std::fs::remove_file(&leases);
    std::fs::write(&leases, "").unwrap();
    let conf = dir.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start {addr}\nend {addr}\ninterface {}\nlease_file {}\npidfile {}\nopt subnet 255.255.255.0\nopt router 10.77.0.1\nopt dns 10.77.0.53\nopt lease {lease}\n",
            n.server_iface,
            leases.display(),
            dir.join("udhcpd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &n.server, "busybox", "udhcpd", "-f"])
        .arg(&conf)
        .spawn()
        .expect("start udhcpd");
    Server { child }
}

fn client_addr(n: &Netns) -> Option<String> {
    let out = sh(&["ip", "-n", &n.client, "-4", "-o", "addr", "show", "dev", &n.iface]);
    out.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_string)
}

fn wait_addr(n: &Netns, want: Option<&str>, timeout: Duration, log: &[String]) {
    let start = Instant::now();
    while client_addr(n).as_deref() != want {
        assert!(
            start.elapsed() < timeout,
            "waited {timeout:?} for {want:?}, have {:?}; events: {log:#?}",
            client_addr(n)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lease_follows_a_server_that_starts_late_changes_and_stops() {
    if let Err(why) = usable() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and this test cannot run: {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let id = std::process::id();
    let n = Netns {
        client: format!("pl-dhcpc-{id}"),
        server: format!("pl-dhcps-{id}"),
        iface: format!("plc{}", id % 100_000),
        server_iface: format!("pls{}", id % 100_000),
    };
    sh(&["ip", "netns", "add", &n.client]);
    sh(&["ip", "netns", "add", &n.server]);
    sh(&[
        "ip",
        "link",
        "add",
        &n.iface,
        "netns",
        &n.client,
        "type",
        "veth",
        "peer",
        "name",
        &n.server_iface,
        "netns",
        &n.server,
    ]);
    sh(&["ip", "-n", &n.server, "addr", "add", "10.77.0.1/24", "dev", &n.server_iface]);
    sh(&["ip", "-n", &n.server, "link", "set", &n.server_iface, "up"]);
    let dir = tempfile::tempdir().unwrap();

    // The keeper runs in the client namespace, on a thread of its own.
    let (tx, rx) = mpsc::channel::<String>();
    let ns_path = PathBuf::from("/run/netns").join(&n.client);
    let iface = n.iface.clone();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&ns_path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let d = DhcpLink::open(&iface).await.expect("open the interface");
            keep_lease(d, move |line, dns| {
                let _ = tx.send(format!("{line} | dns {dns:?}"));
            })
            .await;
        });
    });
    let mut log = Vec::new();
    let drain = |log: &mut Vec<String>| log.extend(rx.try_iter());

    // No server yet: the keeper says so once, and keeps asking.
    std::thread::sleep(Duration::from_secs(3));
    drain(&mut log);
    assert!(log.iter().any(|l| l.contains("no offer") && l.contains("asking again")), "{log:#?}");
    assert_eq!(client_addr(&n), None);

    // The server comes up late: the lease follows within the back-off.
    let server = serve(&n, dir.path(), "10.77.0.10", 6);
    wait_addr(&n, Some("10.77.0.10/24"), Duration::from_secs(30), &log);
    drain(&mut log);
    assert!(log.iter().any(|l| l.contains("DHCP lease 10.77.0.10/24") && l.contains("10.77.0.53")), "{log:#?}");

    // Renewed at T1 (unicast to the server): the address outlives its
    // 6-second lease twice over, with no event for the quiet renewals.
    let seen = log.len();
    std::thread::sleep(Duration::from_secs(13));
    assert_eq!(client_addr(&n).as_deref(), Some("10.77.0.10/24"));
    drain(&mut log);
    assert_eq!(log.len(), seen, "renewals that change nothing are not events: {log:#?}");

    // The server changes its mind (another range, its leases forgotten):
    // it does not answer the renewal, the lease runs out, the address goes
    // and the new one is taken.
    drop(server);
    let server = serve(&n, dir.path(), "10.77.0.20", 6);
    wait_addr(&n, Some("10.77.0.20/24"), Duration::from_secs(40), &log);
    drain(&mut log);
    assert!(log.iter().any(|l| l.contains("10.77.0.10/24 expired: address removed")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("DHCP lease 10.77.0.20/24")), "{log:#?}");

    // The server goes away: the lease ends and the address is removed; the
    // keeper keeps asking.
    drop(server);
    wait_addr(&n, None, Duration::from_secs(20), &log);
    std::thread::sleep(Duration::from_secs(2));
    drain(&mut log);
    assert!(log.iter().any(|l| l.contains("10.77.0.20/24 expired: address removed")), "{log:#?}");
    assert!(log.last().is_some_and(|l| l.contains("asking again")), "{log:#?}");
}
