//! An HA control plane on etcd in host mode: two plinth-init processes
//! (apid, the orchestrator and Debian's etcd under each), each member on
//! an address of its own on loopback (127.0.0.2, 127.0.0.3: etcd's fixed
//! ports 2379/2380 on each). The first forms the etcd cluster
//! (`etcd_bootstrap`), the second adds itself through it before its etcd
//! starts; objects written through one API server are read through the
//! other; `osctl etcd members`, `snapshot` and `remove-member` over the
//! machine API. Needs `etcd` (scripts/setup-debian.sh installs
//! etcd-server); under CI=true a missing etcd fails.

use std::path::PathBuf;
use std::time::Duration;

use plinth_tests::{HostNode, Operator, Run, etcd_control_plane, kubectl, osctl, wait_for};

fn etcd() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("PLINTH_ETCD").unwrap_or_else(|| "/usr/bin/etcd".into()));
    if p.is_file() {
        return Some(p);
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI: no etcd at {} (apt-get install etcd-server)",
        p.display()
    );
    eprintln!("SKIPPED: no etcd at {}", p.display());
    None
}

/// A control plane's config: `osctl gen config`'s, on loopback address
/// `addr`, on etcd with both control planes of the first test as endpoints.
fn config(op: &Operator, name: &str, addr: &str, bootstrap: bool) -> anyhow::Result<PathBuf> {
    config_among(op, name, addr, &["127.0.0.2", "127.0.0.3"], bootstrap)
}

/// As [`config`], the control planes at `all` (each test its own
/// addresses: etcd's ports are fixed, the tests run at once).
fn config_among(op: &Operator, name: &str, addr: &str, all: &[&str], bootstrap: bool) -> anyhow::Result<PathBuf> {
    let base = std::fs::read_to_string(op.gen_config(&format!("{name}.base.toml"), 1)?)?;
    let mut text = base
        .replace("hostname = \"n1\"", &format!("hostname = \"{name}\""))
        .replace("\"10.0.0.5/24\"", &format!("\"{addr}/8\""));
    // No route: host mode configures no network, and 10.0.0.1 is off 127/8.
    let routes = text.find("[[machine.network.routes]]").map(|at| {
        let end = text[at + 1..].find("\n[").map_or(text.len(), |e| at + 1 + e);
        at..end
    });
    if let Some(r) = routes {
        text.replace_range(r, "");
    }
    let endpoints: Vec<String> = all.iter().map(|a| format!("\"https://{a}:6443\"")).collect();
    let etcd = format!(
        "datastore = \"etcd\"\nendpoints = [{}]\n{}",
        endpoints.join(", "),
        if bootstrap { "etcd_bootstrap = true\n" } else { "" }
    );
    anyhow::ensure!(text.contains("datastore = \"sqlite\"\n"), "gen config's datastore line: {text}");
    text = text.replacen("datastore = \"sqlite\"\n", &etcd, 1);
    let path = op.path(&format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The member names node `addr`'s member lists (`None` until it answers).
fn members(op: &Operator, addr: &str) -> Option<Vec<String>> {
    let r = osctl(&op.osctlconfig(), &["-n", addr, "-o", "json", "etcd", "members"]);
    let v = r.json().ok()?;
    let mut names: Vec<String> =
        v.as_array()?.iter().map(|m| m["name"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    Some(names)
}

fn wait_members(op: &Operator, node: &HostNode, want: &[&str]) -> anyhow::Result<()> {
    let mut last = None;
    wait_for(&format!("the etcd members {want:?}"), Duration::from_secs(90), || {
        last = members(op, &node.addr());
        (last.as_deref() == Some(&want.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..])).then_some(())
    })
    .map_err(|e| {
        let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "etcd", "members"]);
        let events = osctl(&op.osctlconfig(), &["-n", &node.addr(), "events"]).stdout;
        let logs = osctl(&op.osctlconfig(), &["-n", &node.addr(), "logs", "etcd"]).stdout;
        e.context(format!("last: {last:?}; {r:?}\nevents:\n{events}\netcd:\n{logs}\n{}", node.log()))
    })
}

/// kubectl against `url` with the admin kubeconfig `osctl kubeconfig` hands out.
fn kubectl_at(op: &Operator, node: &HostNode, url: &str, args: &[&str]) -> anyhow::Result<Run> {
    let kc = op.path(&format!("admin-{}.kubeconfig", url.replace([':', '/', '.'], "_")));
    if !kc.exists() {
        let r = osctl(
            &op.osctlconfig(),
            &["-n", &node.addr(), "kubeconfig", "--server", url, "--out", kc.to_str().unwrap()],
        );
        r.ok()?;
    }
    kubectl(&kc, args)
}

#[test]
fn two_control_planes_form_an_etcd_cluster_share_objects_and_snapshot_it() -> anyhow::Result<()> {
    let Some(etcd) = etcd() else { return Ok(()) };
    let op = Operator::new()?;
    let (kube1, kube2) =
        (format!("127.0.0.2:{}", plinth_tests::free_port()), format!("127.0.0.3:{}", plinth_tests::free_port()));
    let cp1 = etcd_control_plane(&op, &config(&op, "cp1", "127.0.0.2", true)?, &etcd, &kube1)?;
    wait_members(&op, &cp1, &["cp1"])?;

    // The second adds itself through the first before its etcd starts.
    let cp2 = etcd_control_plane(&op, &config(&op, "cp2", "127.0.0.3", false)?, &etcd, &kube2)?;
    wait_members(&op, &cp2, &["cp1", "cp2"])?;
    assert_eq!(members(&op, &cp1.addr()).unwrap(), ["cp1", "cp2"], "both members see both");
    let events = osctl(&op.osctlconfig(), &["-n", &cp2.addr(), "events"]).stdout;
    assert!(events.contains("added to the etcd cluster through 127.0.0.2:2379"), "{events}");
    let logs = osctl(&op.osctlconfig(), &["-n", &cp2.addr(), "logs", "etcd"]).ok()?.stdout;
    assert!(!logs.is_empty(), "etcd's log is served by osctl logs etcd");

    // One store: written through one API server, read through the other.
    let (url1, url2) = (format!("https://{kube1}"), format!("https://{kube2}"));
    wait_for("cp1's API", Duration::from_secs(60), || {
        kubectl_at(&op, &cp1, &url1, &["get", "namespaces"]).ok()?.ok().ok()
    })
    .map_err(|e| e.context(cp1.log()))?;
    kubectl_at(&op, &cp1, &url1, &["create", "configmap", "shared", "--from-literal=k=v"])?.ok()?;
    let got = wait_for("cp2's API", Duration::from_secs(60), || {
        kubectl_at(&op, &cp2, &url2, &["get", "configmap", "shared", "-o", "jsonpath={.data.k}"]).ok()?.ok().ok()
    })
    .map_err(|e| e.context(cp2.log()))?;
    assert_eq!(got.stdout, "v");

    // A consistent snapshot, checked on the node and written whole here.
    let file = op.path("etcd.snapshot");
    let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "etcd", "snapshot", "--out", file.to_str().unwrap()]).ok()?;
    assert!(r.stdout.contains("etcd snapshot written to"), "{r:?}");
    let bytes = std::fs::read(&file)?;
    let (db, sum) = bytes.split_at(bytes.len() - 32);
    use sha2::Digest as _;
    assert_eq!(sha2::Sha256::digest(db).as_slice(), sum, "etcd's own checksum closes the file");
    assert!(db.windows(b"shared".len()).any(|w| w == b"shared"), "the snapshot holds the configmap");
    assert!(!file.with_extension("partial").exists());

    // A reader may list members but not take a snapshot (every Secret).
    // (roles' unit test); removal: a name not in the list is refused,
    // naming the members; cp2 leaves the list.
    let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "etcd", "remove-member", "nosuch"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no member named \"nosuch\"") && r.stderr.contains("cp2"), "{r:?}");
    // (Removed while both run: of two members, one alone has no quorum
    // to change the list, as etcd's runtime reconfiguration says.)
    // etcd refuses a change while a member joined less than 5 s ago
    // ("unhealthy cluster"): the operator tries again, as here.
    let mut last = None;
    let r = wait_for("cp2 removed", Duration::from_secs(30), || {
        let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "etcd", "remove-member", "cp2"]);
        let done = (r.code == 0).then(|| r.stdout.clone());
        last = Some(r);
        done
    })
    .map_err(|e| e.context(format!("{last:?}")))?;
    assert!(r.contains("member cp2"), "{r:?}");
    wait_members(&op, &cp1, &["cp1"])?;
    drop(cp2);
    // The store still writes with one member left of one.
    kubectl_at(&op, &cp1, &url1, &["create", "configmap", "after"])?.ok()?;
    Ok(())
}

/// `osctl reset` of a control plane takes its etcd member out of the list
/// (through the other member), so that the others' quorum no longer counts
/// it; it refuses, before anything changes, when the members that stay
/// would have no quorum (one of them down) or it is the last member, unless
/// `--force`.
#[test]
fn a_reset_control_plane_leaves_etcd_and_quorum_or_the_last_member_refuse_it() -> anyhow::Result<()> {
    let Some(etcd) = etcd() else { return Ok(()) };
    let op = Operator::new()?;
    let all = ["127.0.0.4", "127.0.0.5"];
    let kube = |a: &str| format!("{a}:{}", plinth_tests::free_port());
    let (cfg1, cfg2) = (config_among(&op, "cp1", all[0], &all, true)?, config_among(&op, "cp2", all[1], &all, false)?);
    let cp1 = etcd_control_plane(&op, &cfg1, &etcd, &kube(all[0]))?;
    wait_members(&op, &cp1, &["cp1"])?;
    let mut cp2 = etcd_control_plane(&op, &cfg2, &etcd, &kube(all[1]))?;
    wait_members(&op, &cp2, &["cp1", "cp2"])?;

    // cp2 is down: cp1 leaving would leave cp2 alone and silent. Refused
    // before the drain, naming the member that is down; nothing changes.
    cp2.stop()?;
    let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "reset", "--yes"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("would lose etcd's quorum") && r.stderr.contains("down: cp2"), "{r:?}");
    assert!(r.stderr.contains("nothing was wiped"), "{r:?}");
    cp2.boot()?;
    wait_members(&op, &cp1, &["cp1", "cp2"])?;
    wait_members(&op, &cp2, &["cp1", "cp2"])?;

    // cp2 is reset: its member leaves through cp1. (etcd refuses a change
    // for 5 s after a member (re)joins, "unhealthy cluster": tried again.)
    let mut last = None;
    let said = wait_for("cp2 reset", Duration::from_secs(60), || {
        let r = osctl(&op.osctlconfig(), &["-n", &cp2.addr(), "reset", "--yes"]);
        let done = (r.code == 0).then(|| r.stdout.clone());
        last = Some(r);
        done
    })
    .map_err(|e| e.context(format!("{last:?}")))?;
    assert!(said.contains("etcd member cp2") && said.contains("removed"), "{said}");
    wait_members(&op, &cp1, &["cp1"])?;

    // cp1 is the last member: its reset would end the cluster.
    let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "reset", "--yes"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("cp1 is the cluster's last etcd member") && r.stderr.contains("--force"), "{r:?}");
    assert_eq!(members(&op, &cp1.addr()).as_deref(), Some(&["cp1".to_string()][..]), "still serving");
    let r = osctl(&op.osctlconfig(), &["-n", &cp1.addr(), "reset", "--yes", "--force"]).ok()?;
    assert!(r.stdout.contains("kept (forced)") && r.stdout.contains("maintenance mode"), "{r:?}");
    Ok(())
}

/// `osctl etcd restore` onto a control plane listed alone: a damaged file
/// is refused naming it and what is wrong, and the running cluster keeps
/// what it has; the snapshot restored, the member is a new cluster of one
/// holding the objects of the snapshot (and not those written after it),
/// and takes new writes.
#[test]
fn a_snapshot_restored_onto_a_lone_control_plane_brings_its_objects_back() -> anyhow::Result<()> {
    let Some(etcd) = etcd() else { return Ok(()) };
    let op = Operator::new()?;
    let addr = "127.0.0.6";
    let kube = format!("{addr}:{}", plinth_tests::free_port());
    let cp = etcd_control_plane(&op, &config_among(&op, "cp1", addr, &[addr], true)?, &etcd, &kube)?;
    wait_members(&op, &cp, &["cp1"])?;
    let url = format!("https://{kube}");
    wait_for("the API", Duration::from_secs(60), || kubectl_at(&op, &cp, &url, &["get", "namespaces"]).ok()?.ok().ok())
        .map_err(|e| e.context(cp.log()))?;
    kubectl_at(&op, &cp, &url, &["create", "configmap", "kept", "--from-literal=k=v"])?.ok()?;
    let file = op.path("etcd.snapshot");
    osctl(&op.osctlconfig(), &["-n", &cp.addr(), "etcd", "snapshot", "--out", file.to_str().unwrap()]).ok()?;
    kubectl_at(&op, &cp, &url, &["create", "configmap", "later", "--from-literal=k=v"])?.ok()?;

    // A damaged copy: refused, naming the file and what is wrong; nothing changes.
    let bad = op.path("damaged.snapshot");
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bad, &bytes)?;
    let r = osctl(&op.osctlconfig(), &["-n", &cp.addr(), "etcd", "restore", bad.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(bad.to_str().unwrap()) && r.stderr.contains("sha256 does not match"), "{r:?}");
    let names = || -> anyhow::Result<String> {
        Ok(kubectl_at(&op, &cp, &url, &["get", "configmaps", "-o", "jsonpath={.items[*].metadata.name}"])?.ok()?.stdout)
    };
    let before = names()?;
    assert!(before.contains("kept") && before.contains("later"), "{before}");

    let r = osctl(&op.osctlconfig(), &["-n", &cp.addr(), "etcd", "restore", file.to_str().unwrap()]).ok()?;
    assert!(r.stdout.contains("etcd restored") && r.stdout.contains("a new cluster of cp1 alone"), "{r:?}");
    let after = wait_for("the API after the restore", Duration::from_secs(60), || names().ok())?;
    assert!(after.contains("kept") && !after.contains("later"), "the snapshot's objects, not later ones: {after}");
    wait_members(&op, &cp, &["cp1"])?;
    kubectl_at(&op, &cp, &url, &["create", "configmap", "new", "--from-literal=k=v"])?.ok()?;
    let got = kubectl_at(&op, &cp, &url, &["get", "configmap", "new", "-o", "jsonpath={.data.k}"])?.ok()?;
    assert_eq!(got.stdout, "v");

    Ok(())
}
