//! The trust chain end to end, in host mode: the real osctl binary over
//! mutual TLS on 127.0.0.1 to the real apid, forwarding to the real init.

use std::path::Path;
use std::time::Duration;

use machinery::api::{self, ApplyMode};
use machinery::signing::{self, Purpose};
use osctl::connect::{self, Credentials, LocalChecks};
use plinth_tests::{HostNode, Operator, apply, kubectl, osctl, wait_for};

/// A node with config version 1 applied, and the operator who applied it.
fn configured_node() -> anyhow::Result<(Operator, HostNode, std::path::PathBuf)> {
    let op = Operator::new()?;
    let (node, cfg) = plinth_tests::configured_node(&op)?;
    Ok((op, node, cfg))
}

fn wait_configured(op: &Operator, node: &HostNode) -> anyhow::Result<()> {
    let addr = node.addr();
    wait_for("the node to serve mutual TLS with its config", Duration::from_secs(20), || {
        let r = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]);
        (r.code == 0 && r.json().ok()?[0]["mode"] == "configured").then_some(())
    })
}

fn apid_pid(op: &Operator, node: &HostNode) -> u64 {
    let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "-o", "json", "services"]);
    let v = r.json().unwrap_or_else(|e| panic!("{e}: {r:?}"));
    v.as_array().unwrap().iter().find(|s| s["name"] == "apid").unwrap()["pid"].as_u64().unwrap()
}

fn stored_config(op: &Operator, node: &HostNode) -> String {
    osctl(&op.osctlconfig(), &["-n", &node.addr(), "get-config"]).ok().unwrap().stdout
}

/// What `get-config` shows of a config: every field, its secrets redacted.
fn redacted(text: &str) -> String {
    machinery::config::MachineConfig::parse("node.toml", text).unwrap().redacted().to_toml()
}

fn mutual(op: &Operator, crt: &str, key: &str) -> Credentials {
    Credentials::Mutual { ca: op.path("ca.crt"), crt: op.path(crt), key: op.path(key) }
}

#[test]
fn gen_keys_config_apply_get_round_trip() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let node = HostNode::start(&op.path("ops.pub"))?;
    let addr = node.addr();
    let cfgpath = op.osctlconfig();

    // Maintenance mode: version answers insecurely, nothing else does.
    let v = osctl(&cfgpath, &["-n", &addr, "--insecure", "-o", "json", "version"]).ok()?.json()?;
    assert_eq!(v[0]["mode"], "maintenance");
    assert_eq!(v[0]["config_version"], 0);
    let r = osctl(&cfgpath, &["-n", &addr, "--insecure", "services"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("maintenance mode"), "{r:?}");

    let cfg = op.gen_config("node.toml", 1)?;
    osctl(&cfgpath, &["validate", "-f", cfg.to_str().unwrap()]).ok()?;
    let dry =
        osctl(&cfgpath, &["-n", &addr, "--insecure", "apply-config", "--dry-run", "-f", cfg.to_str().unwrap()]).ok()?;
    assert!(dry.stdout.contains("+hostname = \"n1\""), "{dry:?}");
    assert!(dry.stdout.contains("dry run, nothing changed"), "{dry:?}");
    let applied = osctl(&cfgpath, &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().unwrap()]).ok()?;
    assert!(applied.stdout.contains("config version 1 applied"), "{applied:?}");
    wait_configured(&op, &node)?;

    // The node hands back the exact bytes that were signed.
    let shown = stored_config(&op, &node);
    assert_eq!(shown, redacted(&std::fs::read_to_string(&cfg)?));
    // The CA key the config carries never leaves the node, for any role.
    assert!(!shown.contains("PRIVATE KEY") && shown.contains("(secret, sha256"), "{shown}");
    let v = osctl(&cfgpath, &["-n", &addr, "-o", "json", "version"]).ok()?.json()?;
    assert_eq!((v[0]["config_version"].as_u64(), v[0]["hostname"].as_str()), (Some(1), Some("n1")));

    // Human table and JSON for services; apid runs.
    let table = osctl(&cfgpath, &["-n", &addr, "services"]).ok()?.stdout;
    assert!(
        table.lines().next().unwrap().contains("SERVICE") && table.contains("apid") && table.contains("running"),
        "{table}"
    );
    assert!(apid_pid(&op, &node) > 0);

    // apid's log records the calls it forwarded.
    let logs = osctl(&cfgpath, &["-n", &addr, "logs", "apid"]).ok()?.stdout;
    assert!(logs.contains("rpc=\"ServiceList\""), "{logs}");
    let tail = osctl(&cfgpath, &["-n", &addr, "logs", "apid", "--tail", "1"]).ok()?.stdout;
    assert_eq!(tail.lines().count(), 1, "{tail}");

    // dmesg reads the kernel log: a line we write there comes back.
    let marker = format!("plinth-test-marker-{}", node.port);
    std::fs::write("/dev/kmsg", format!("{marker}\n"))?;
    let dmesg = osctl(&cfgpath, &["-n", &addr, "dmesg"]).ok()?.stdout;
    assert!(dmesg.contains(&marker), "marker missing from dmesg ({} lines)", dmesg.lines().count());

    let events = osctl(&cfgpath, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("config version 1 applied"), "{events}");
    Ok(())
}

#[test]
fn logs_follow_streams_new_lines() -> anyhow::Result<()> {
    let (op, node, _) = configured_node()?;
    let mut follower = std::process::Command::new(plinth_tests::bin("osctl"))
        .args(["-n", &node.addr(), "logs", "-f", "apid", "--tail", "1"])
        .env("OSCTLCONFIG", op.osctlconfig())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Each call below makes apid log a line, which the follower must see.
    std::thread::sleep(Duration::from_millis(500));
    osctl(&op.osctlconfig(), &["-n", &node.addr(), "version"]).ok()?;
    std::thread::sleep(Duration::from_millis(500));
    follower.kill()?;
    let out = follower.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rpc=\"Version\""), "{text}");
    Ok(())
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let (op, node, cfg) = configured_node()?;
    let addr = node.addr();
    let cfgpath = op.osctlconfig();
    let before = stored_config(&op, &node);
    let pid = apid_pid(&op, &node);
    let v2 = op.gen_config("node2.toml", 2)?;
    let v2s = v2.to_str().unwrap();

    // Signed by another key.
    let other = Operator::new()?;
    let r =
        osctl(&cfgpath, &["-n", &addr, "apply-config", "-f", v2s, "--key", other.path("ops.key").to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("signed by key") && r.stderr.contains("only trusts key"), "{r:?}");

    // A byte changed after signing.
    let signed = op.path("node2.toml.signed");
    osctl(&cfgpath, &["sign", "-f", v2s, "--out", signed.to_str().unwrap()]).ok()?;
    let tampered = String::from_utf8(std::fs::read(&signed)?)?.replace("hostname = \"n1\"", "hostname = \"n9\"");
    std::fs::write(&signed, tampered)?;
    let r = apply(&op, &node, &signed, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("changed after signing"), "{r:?}");

    // Replay of the applied config.
    let r = apply(&op, &node, &cfg, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("is not newer than version 1"), "{r:?}");

    // Invalid TOML, unknown keys, semantic errors: osctl refuses before sending…
    let text = std::fs::read_to_string(&v2)?;
    for (name, bad, expect) in [
        ("syntax.toml", text.replace("[cluster]", "[cluster"), "unclosed table"),
        (
            "unknown.toml",
            text.replace("hostname = \"n1\"", "hostname = \"n1\"\nhostnme = \"x\""),
            "unknown key `hostnme`",
        ),
        (
            "semantic.toml",
            text.replace("role = \"controlplane\"", "role = \"worker\"")
                .replace("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"10.96.0.0/16\""),
            "overlaps the pod network",
        ),
    ] {
        let p = op.path(name);
        std::fs::write(&p, &bad)?;
        let r = apply(&op, &node, &p, &[]);
        assert_eq!(r.code, 3, "{name}: {r:?}");
        assert!(r.stderr.contains(expect) && r.stderr.contains(name), "{name}: {r:?}");
    }

    // …and the node refuses them too, and an unsigned config, when sent raw.
    let rt = tokio::runtime::Runtime::new()?;
    let admin = mutual(&op, "admin.crt", "admin.key");
    let key = signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    rt.block_on(async {
        let mut c = connect::connect(&addr, &admin, LocalChecks::On).await?;
        let unsigned = api::ApplyConfigRequest { config: text.clone().into_bytes(), ..Default::default() };
        let e = c.apply_config(unsigned).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("not signed"), "{e:?}");
        let unknown = text.replace("[cluster]", "[clustr]");
        let req = api::ApplyConfigRequest {
            signature: signing::sign(Purpose::Config, &key, unknown.as_bytes()),
            config: unknown.into_bytes(),
            mode: ApplyMode::Auto as i32,
            ..Default::default()
        };
        let e = c.apply_config(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("unknown key `clustr`") && e.message().contains("did you mean `cluster`?"),
            "{e:?}"
        );
        anyhow::Ok(())
    })?;

    // A reader may read but not apply.
    let reader = osctl(
        Path::new("/nonexistent"),
        &[
            "gen",
            "cert",
            "--name",
            "bob",
            "--role",
            "reader",
            "--ca-dir",
            op.dir.path().to_str().unwrap(),
            "--out",
            op.dir.path().to_str().unwrap(),
        ],
    );
    reader.ok()?;
    let reader_cfg = op.path("reader.osctlconfig");
    std::fs::write(
        &reader_cfg,
        "[contexts.r]\nca = \"ca.crt\"\ncrt = \"bob.crt\"\nkey = \"bob.key\"\nsigning_key = \"ops.key\"\n",
    )?;
    osctl(&reader_cfg, &["-n", &addr, "version"]).ok()?;
    let r = osctl(&reader_cfg, &["-n", &addr, "apply-config", "-f", v2s]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("role reader may not call ApplyConfig"), "{r:?}");

    // A certificate from another CA.
    let other_cfg = op.path("other.osctlconfig");
    std::fs::write(
        &other_cfg,
        format!(
            "[contexts.o]\nca = \"ca.crt\"\ncrt = \"{0}/admin.crt\"\nkey = \"{0}/admin.key\"\n",
            other.dir.path().display()
        ),
    )?;
    let r = osctl(&other_cfg, &["-n", &addr, "version"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("issued by another CA"), "{r:?}");

    // An expired certificate: osctl itself says so; sent anyway, the node refuses it.
    osctl(
        Path::new("/nonexistent"),
        &[
            "gen",
            "cert",
            "--name",
            "old",
            "--role",
            "admin",
            "--valid-for",
            "1s",
            "--ca-dir",
            op.dir.path().to_str().unwrap(),
            "--out",
            op.dir.path().to_str().unwrap(),
        ],
    )
    .ok()?;
    std::thread::sleep(Duration::from_secs(2));
    let old_cfg = op.path("old.osctlconfig");
    std::fs::write(&old_cfg, "[contexts.o]\nca = \"ca.crt\"\ncrt = \"old.crt\"\nkey = \"old.key\"\n")?;
    let r = osctl(&old_cfg, &["-n", &addr, "version"]);
    assert!(r.code != 0 && r.stderr.contains("old.crt expired on"), "{r:?}");
    let old = mutual(&op, "old.crt", "old.key");
    let no_cert = Credentials::Insecure;
    rt.block_on(async {
        let mut c = connect::connect(&addr, &old, LocalChecks::Off).await?;
        c.version(api::VersionRequest {}).await.unwrap_err();
        let why = connect::diagnose(&addr, &old, LocalChecks::Off).await.unwrap_or_default();
        assert!(why.contains("expired"), "{why}");
        // No client certificate at all.
        let mut c = connect::connect(&addr, &no_cert, LocalChecks::On).await?;
        c.version(api::VersionRequest {}).await.unwrap_err();
        let why = connect::diagnose(&addr, &no_cert, LocalChecks::On).await.unwrap_or_default();
        assert!(why.contains("requires a client certificate"), "{why}");
        anyhow::Ok(())
    })?;
    let r = osctl(&cfgpath, &["-n", &addr, "--insecure", "version"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("requires a client certificate"), "{r:?}");

    // Nothing changed: same config, same apid process.
    assert_eq!(stored_config(&op, &node), before);
    assert_eq!(apid_pid(&op, &node), pid);
    Ok(())
}

#[test]
fn config_survives_an_init_restart_and_a_reboot() -> anyhow::Result<()> {
    let (op, mut node, cfg) = configured_node()?;
    let expected = redacted(&std::fs::read_to_string(&cfg)?);
    let status = node.stop()?;
    assert!(status.success(), "init exited with {status}");
    node.boot()?;
    wait_configured(&op, &node)?;
    assert_eq!(stored_config(&op, &node), expected);

    // Reboot: init stops its services and starts afresh over the same state.
    // The node booted moments ago, so its uptime cannot tell the boots
    // apart: the apid answering must be another process than before.
    let pid = node.init_pid();
    let apid_before = apid_pid(&op, &node);
    osctl(&op.osctlconfig(), &["-n", &node.addr(), "reboot"]).ok()?;
    wait_for("the node to come back with a new apid", Duration::from_secs(20), || {
        let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "-o", "json", "services"]);
        let v = r.json().ok()?;
        let apid = v.as_array()?.iter().find(|s| s["name"] == "apid")?.clone();
        (apid["state"] == "running" && apid["pid"].as_u64()? != apid_before).then_some(())
    })?;
    wait_configured(&op, &node)?;
    assert_eq!(node.init_pid(), pid, "a host-mode reboot re-executes init in place");
    assert_eq!(stored_config(&op, &node), expected);
    let events = osctl(&op.osctlconfig(), &["-n", &node.addr(), "events"]).ok()?.stdout;
    assert!(events.contains("config version 1 loaded"), "{events}");
    Ok(())
}

#[test]
fn apid_killed_is_restarted() -> anyhow::Result<()> {
    let (op, node, _) = configured_node()?;
    let pid = apid_pid(&op, &node);
    let services = osctl(&op.osctlconfig(), &["-n", &node.addr(), "-o", "json", "services"]).json()?;
    let restarts = services[0]["restarts"].as_u64().unwrap_or(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    let v = wait_for("apid to come back", Duration::from_secs(20), || {
        let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "-o", "json", "services"]);
        let v = r.json().ok()?;
        let apid = v.as_array()?.iter().find(|s| s["name"] == "apid")?.clone();
        (apid["state"] == "running" && apid["pid"].as_u64()? != pid).then_some(apid)
    })?;
    assert_eq!(v["restarts"].as_u64(), Some(restarts + 1));
    assert_eq!(v["last_exit"], "killed by SIGKILL");
    Ok(())
}

#[test]
fn apply_modes_staged_try_and_no_reboot() -> anyhow::Result<()> {
    let (op, mut node, cfg) = configured_node()?;
    let addr = node.addr();
    let c = op.osctlconfig();
    let v1 = std::fs::read_to_string(&cfg)?;
    let text = |v: u64| v1.replace("version = 1", &format!("version = {v}"));

    // no-reboot refuses a change that needs a reboot; auto would reboot.
    let p = op.path("cidr.toml");
    std::fs::write(&p, text(2).replace("10.244.0.0/16", "10.200.0.0/16"))?;
    let r = apply(&op, &node, &p, &["--mode", "no-reboot"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("need a reboot: cluster.pod_cidr"), "{r:?}");

    // try: applied, then reverted when not confirmed in time.
    let p = op.path("try.toml");
    std::fs::write(&p, text(2).replace("hostname = \"n1\"", "hostname = \"n1\"\nntp = [\"time.example\"]"))?;
    apply(&op, &node, &p, &["--mode", "try", "--timeout", "2s"]).ok()?;
    assert!(stored_config(&op, &node).contains("time.example"));
    wait_for("the trial to revert", Duration::from_secs(10), || {
        (stored_config(&op, &node) == redacted(&v1)).then_some(())
    })?;

    // try, then confirmed by applying the same config again.
    apply(&op, &node, &p, &["--mode", "try", "--timeout", "3s"]).ok()?;
    let r = apply(&op, &node, &p, &[]).ok()?;
    assert!(r.stdout.contains("confirmed"), "{r:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(stored_config(&op, &node).contains("time.example"));

    // staged: the node keeps its config until the next boot.
    let p = op.path("staged.toml");
    std::fs::write(&p, text(3).replace("hostname = \"n1\"", "hostname = \"n1\"\nntp = [\"other.example\"]"))?;
    apply(&op, &node, &p, &["--mode", "staged"]).ok()?;
    let v = osctl(&c, &["-n", &addr, "-o", "json", "version"]).ok()?.json()?;
    assert_eq!((v[0]["config_version"].as_u64(), v[0]["staged_config_version"].as_u64()), (Some(2), Some(3)));
    node.stop()?;
    node.boot()?;
    wait_configured(&op, &node)?;
    assert!(stored_config(&op, &node).contains("version = 3"));
    Ok(())
}

#[test]
fn shutdown_stops_services_and_exits() -> anyhow::Result<()> {
    let (op, mut node, _) = configured_node()?;
    let apid = apid_pid(&op, &node);
    let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "shutdown"]).ok()?;
    assert!(r.stdout.contains("shutting down"), "{r:?}");
    let status = node.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(apid as i32), None).is_err(), "apid outlived init");
    Ok(())
}

/// Flips one bit in the middle of a file, as a failing card would.
fn flip_a_bit(path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn a_damaged_config_falls_back_and_never_opens_the_node() -> anyhow::Result<()> {
    let (op, mut node, cfg) = configured_node()?;
    let expected = redacted(&std::fs::read_to_string(&cfg)?);
    let dir = node.state.path().join("config");
    let addr = node.addr();

    // One flipped bit in the stored config: the copy the last boot kept
    // takes its place, and the node comes back configured.
    node.stop()?;
    flip_a_bit(&dir.join("config.signed"))?;
    node.boot()?;
    wait_configured(&op, &node).map_err(|e| anyhow::anyhow!("{e}: {}", node.log()))?;
    assert_eq!(stored_config(&op, &node), expected);
    let events = osctl(&op.osctlconfig(), &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("the stored config cannot be used"), "{events}");
    assert!(events.contains("running the last good config (version 1) instead"), "{events}");

    // Both copies damaged: safe mode — the same certificates, client
    // certificates still required, no maintenance mode, no exit (on a
    // board: no reboot loop).
    node.stop()?;
    flip_a_bit(&dir.join("config.signed"))?;
    flip_a_bit(&dir.join("last-good.signed"))?;
    node.boot()?;
    let v = wait_for("safe mode", Duration::from_secs(20), || {
        let r = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]);
        let v = r.json().ok()?;
        (v[0]["mode"] == "safe").then_some(v)
    })?;
    assert!(v[0]["safe_reason"].as_str().is_some_and(|r| r.contains("config.signed")), "{v}");
    let pid = node.init_pid().expect("init runs");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "init is still running");
    let anonymous = osctl(&op.osctlconfig(), &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().unwrap()]);
    assert_ne!(anonymous.code, 0, "safe mode is not maintenance mode: {anonymous:?}");
    // The same config again is refused as stale; a newer one recovers.
    let stale = apply(&op, &node, &cfg, &[]);
    assert_eq!(stale.code, 4, "{stale:?}");
    let v2 = op.path("v2.toml");
    std::fs::write(&v2, std::fs::read_to_string(&cfg)?.replace("version = 1", "version = 2"))?;
    apply(&op, &node, &v2, &[]).ok()?;
    wait_configured(&op, &node)?;
    let v = osctl(&op.osctlconfig(), &["-n", &addr, "-o", "json", "version"]).ok()?.json()?;
    assert_eq!((v[0]["mode"].as_str(), v[0]["config_version"].as_u64()), (Some("configured"), Some(2)), "{v}");
    Ok(())
}

/// `version` as the operator's admin sees it, once it answers `mode`.
fn wait_mode(op: &Operator, node: &HostNode, mode: &str, insecure: bool) -> anyhow::Result<serde_json::Value> {
    let addr = node.addr();
    wait_for(mode, Duration::from_secs(20), || {
        let mut args = vec!["-n", addr.as_str(), "-o", "json", "version"];
        if insecure {
            args.insert(0, "--insecure");
        }
        let v = osctl(&op.osctlconfig(), &args).json().ok()?;
        (v[0]["mode"] == mode).then_some(v)
    })
    .map_err(|e| anyhow::anyhow!("{e}: {}", node.log()))
}

/// Waits for safe mode (seen with the admin's certificate, or insecurely
/// when the node trusts no client), checks its reason, and that an
/// anonymous apply-config of `cfg` is refused.
fn safe_and_closed(op: &Operator, node: &HostNode, insecure: bool, why: &str, cfg: &Path) -> anyhow::Result<()> {
    let v = wait_mode(op, node, "safe", insecure)?;
    assert!(v[0]["safe_reason"].as_str().is_some_and(|r| r.contains(why)), "{v}");
    let anonymous =
        osctl(&op.osctlconfig(), &["-n", &node.addr(), "--insecure", "apply-config", "-f", cfg.to_str().unwrap()]);
    assert_ne!(anonymous.code, 0, "safe mode is not maintenance mode: {anonymous:?}");
    Ok(())
}

#[test]
fn a_state_that_cannot_be_read_is_safe_mode_with_the_kept_trust() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let (op, mut node, cfg) = configured_node()?;
    // The copy of the trust, outside STATE (a node keeps it on EPHEMERAL).
    let ephemeral = tempfile::tempdir()?;
    let copy = ephemeral.path().join("trust/trust.json");
    node.stop()?;
    node.extra_args = vec!["--trust-copy".into(), copy.display().to_string()];
    node.boot()?;
    wait_configured(&op, &node)?;
    let mode = std::fs::metadata(&copy)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy holds apid's serving key");
    assert!(!std::fs::read_to_string(&copy)?.contains(&std::fs::read_to_string(op.path("ca.key"))?.trim().to_string()));

    // STATE's files cannot be read (as a card failing there would): init
    // neither stops nor opens up; it serves with the kept trust.
    node.stop()?;
    let config = node.state.path().join("config");
    std::fs::remove_dir_all(&config)?;
    std::fs::write(&config, b"\x00\x13garbage")?;
    node.boot()?;
    safe_and_closed(&op, &node, false, "STATE cannot be read", &cfg)?;
    // An admin reads what happened, and learns why no config is taken.
    let events = osctl(&op.osctlconfig(), &["-n", &node.addr(), "events"]).ok()?.stdout;
    assert!(events.contains("safe mode: STATE cannot be read"), "{events}");
    let v2 = op.path("v2.toml");
    std::fs::write(&v2, std::fs::read_to_string(&cfg)?.replace("version = 1", "version = 2"))?;
    let refused = apply(&op, &node, &v2, &[]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(refused.stderr.contains("would not survive a reboot"), "{refused:?}");

    // Neither STATE nor the copy: still safe mode, trusting nobody.
    node.stop()?;
    std::fs::remove_file(&copy)?;
    node.boot()?;
    safe_and_closed(&op, &node, true, "STATE cannot be read", &v2)?;
    assert!(node.log().contains("trusts no client"), "said on the console");
    Ok(())
}

#[test]
fn a_node_refuses_a_config_of_another_cluster() -> anyhow::Result<()> {
    let (op, mut node, cfg) = configured_node()?;
    let text = std::fs::read_to_string(&cfg)?;
    let ours = machinery::config::MachineConfig::parse("node.toml", &text)
        .unwrap()
        .cluster
        .id
        .expect("gen config sets cluster.id");
    let theirs = "c-0123456789abcdef01234567";
    let other = op.path("other.toml");
    std::fs::write(&other, text.replace("version = 1", "version = 2").replace(&ours, theirs))?;
    let r = apply(&op, &node, &other, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains(&ours) && r.stderr.contains(theirs), "both ids named: {r:?}");
    let bare = op.path("bare.toml");
    std::fs::write(&bare, text.replace("version = 1", "version = 2").replace(&format!("id = \"{ours}\"\n"), ""))?;
    let r = apply(&op, &node, &bare, &[]);
    assert!(r.code == 4 && r.stderr.contains("carries no cluster.id"), "{r:?}");

    // At boot too: another cluster's signed config put on STATE.
    node.stop()?;
    let key = signing::signing_key_from_pem(&std::fs::read_to_string(op.path("ops.key"))?)?;
    let theirs_text = std::fs::read_to_string(&other)?;
    let sig = signing::sign(Purpose::Config, &key, theirs_text.as_bytes());
    std::fs::write(
        node.state.path().join("config/config.signed"),
        signing::envelope_encode(theirs_text.as_bytes(), &sig),
    )?;
    node.boot()?;
    let v = wait_mode(&op, &node, "safe", false)?;
    let why = v[0]["safe_reason"].as_str().unwrap_or_default();
    assert!(why.contains(&ours) && why.contains(theirs), "{v}");

    // STATE wiped of its configs (a blank STATE formatted, files lost):
    // the trust record says the node was configured: safe mode, not open.
    node.stop()?;
    for f in ["config.signed", "last-good.signed"] {
        std::fs::remove_file(node.state.path().join("config").join(f))?;
    }
    node.boot()?;
    safe_and_closed(&op, &node, false, "configured before", &other)?;
    Ok(())
}

#[test]
fn boot_steps_are_this_runs_and_apid_reports_serving() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let mut node = HostNode::start(&op.path("ops.pub"))?;
    let (c, addr) = (op.osctlconfig(), node.addr());
    let steps = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v[0]["boot_steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s["since_boot_us"].as_u64().unwrap_or(0)))
            .collect()
    };
    // Maintenance mode: version (and so boot-times) answers, with the
    // kernel's boot id and the step apid reports once it listens.
    let v = wait_for("apid's boot step", Duration::from_secs(20), || {
        let v = osctl(&c, &["-n", &addr, "--insecure", "-o", "json", "version"]).json().ok()?;
        steps(&v).iter().any(|(n, _)| n == "apid").then_some(v)
    })?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    assert_eq!(v[0]["boot_id"], boot_id.trim());
    let first = steps(&v);
    assert!(first.iter().all(|(_, us)| *us > 0), "{first:?}");
    let table = osctl(&c, &["-n", &addr, "--insecure", "boot-times"]).ok()?;
    assert!(table.stdout.contains("apid serving the machine API"), "{table:?}");

    // A new run of init records its own steps, not the last run's.
    node.stop()?;
    node.boot()?;
    let again = wait_for("apid's boot step after a restart", Duration::from_secs(20), || {
        let v = osctl(&c, &["-n", &addr, "--insecure", "-o", "json", "version"]).json().ok()?;
        let s = steps(&v);
        s.iter().any(|(n, _)| n == "apid").then_some(s)
    })?;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].1 > first[0].1, "the step is the new run's: {again:?} after {first:?}");
    Ok(())
}

/// kubectl against the API at `url` with a client certificate and the CA
/// it trusts the server by, given as files (no kubeconfig).
fn kubectl_with(url: &str, ca: &Path, crt: &Path, key: &Path) -> anyhow::Result<plinth_tests::Run> {
    let flag = |name: &str, p: &Path| format!("--{name}={}", p.display());
    kubectl(
        Path::new("/dev/null"),
        &[
            &format!("--server={url}"),
            &flag("certificate-authority", ca),
            &flag("client-certificate", crt),
            &flag("client-key", key),
            "get",
            "namespaces",
        ],
    )
}

/// A host-mode control plane running the orchestrator (API on the
/// returned URL), with `config` applied through maintenance mode.
fn control_plane(op: &Operator, config: &Path) -> anyhow::Result<(HostNode, String)> {
    let mut node = HostNode::start(&op.path("ops.pub"))?;
    node.stop()?;
    let url = format!("https://127.0.0.1:{}", plinth_tests::free_port());
    let orchestrator = plinth_tests::bin("orchestrator").display().to_string();
    node.extra_args = vec!["--orchestrator".into(), orchestrator, "--kube-listen".into(), url[8..].to_string()];
    node.boot()?;
    apply(op, &node, config, &["--insecure"]).ok()?;
    wait_configured(op, &node)?;
    Ok((node, url))
}

/// Waits until the API takes the kubeconfig `osctl kubeconfig` hands out
/// (`admin.kubeconfig`); writes its client certificate and key to
/// `kubectl.crt`, `kubectl.key`.
fn admin_kubeconfig(op: &Operator, node: &HostNode, url: &str) -> anyhow::Result<()> {
    use base64::Engine as _;
    let kubeconfig = op.path("admin.kubeconfig");
    let (kc, addr) = (kubeconfig.to_str().unwrap(), node.addr());
    wait_for("the admin kubeconfig to work", Duration::from_secs(60), || {
        osctl(&op.osctlconfig(), &["-n", &addr, "kubeconfig", "--server", url, "--out", kc]).ok().ok()?;
        kubectl(&kubeconfig, &["get", "namespaces"]).ok()?.ok().ok()
    })
    .map_err(|e| e.context(node.log()))?;
    for (name, file) in [("client-certificate-data", "kubectl.crt"), ("client-key-data", "kubectl.key")] {
        let path = format!("jsonpath={{.users[0].user.{name}}}");
        let r = kubectl(&kubeconfig, &["config", "view", "--raw", "-o", &path])?.ok()?;
        std::fs::write(op.path(file), base64::engine::general_purpose::STANDARD.decode(r.stdout.trim())?)?;
    }
    Ok(())
}

#[test]
fn the_machine_api_and_kubernetes_trust_separate_cas() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let (node, url) = control_plane(&op, &op.gen_config("node.toml", 1)?)?;
    let addr = node.addr();

    // `osctl kubeconfig` hands out the control plane's admin kubeconfig:
    // its certificate is the Kubernetes CA's, and the API takes it.
    admin_kubeconfig(&op, &node, &url)?;
    let (kube_crt, kube_key) = (op.path("kubectl.crt"), op.path("kubectl.key"));
    let issuer = machinery::pki::cert_info(&std::fs::read_to_string(&kube_crt)?)?.issuer;
    let kube_ca = machinery::pki::cert_info(&std::fs::read_to_string(op.path("kube-ca.crt"))?)?;
    assert_eq!(issuer, kube_ca.subject, "kubectl's certificate is the Kubernetes CA's");
    kubectl_with(&url, &op.path("kube-ca.crt"), &kube_crt, &kube_key)?.ok()?;

    // The API server serves with the Kubernetes CA, not the machine API's…
    let r = kubectl_with(&url, &op.path("ca.crt"), &kube_crt, &kube_key)?;
    assert!(r.code != 0 && r.stderr.contains("certificate signed by unknown authority"), "{r:?}");
    // …and refuses osctl's admin certificate (of the machine-API CA).
    let r = kubectl_with(&url, &op.path("kube-ca.crt"), &op.path("admin.crt"), &op.path("admin.key"))?;
    assert!(r.code != 0, "{r:?}");
    assert!(r.stderr.contains("unknown certificate authority") || r.stderr.contains("Unauthorized"), "{r:?}");

    // apid refuses kubectl's certificate: it is not of the machine-API CA.
    let as_kubectl = op.path("as-kubectl.osctlconfig");
    std::fs::write(
        &as_kubectl,
        format!(
            "[contexts.k]\nca = \"{}\"\ncrt = \"{}\"\nkey = \"{}\"\n",
            op.path("ca.crt").display(),
            kube_crt.display(),
            kube_key.display()
        ),
    )?;
    let r = osctl(&as_kubectl, &["-n", &addr, "--context", "k", "version"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("does not trust your client certificate"), "{r:?}");
    // The machine API's own admin still gets in.
    osctl(&op.osctlconfig(), &["-n", &addr, "version"]).ok()?;
    Ok(())
}

#[test]
fn a_config_of_the_one_ca_form_keeps_its_one_ca_for_kubernetes() -> anyhow::Result<()> {
    let op = Operator::new()?;
    // What `gen config` wrote before the split: no Kubernetes CA of its own.
    let split = std::fs::read_to_string(op.gen_config("split.toml", 1)?)?;
    let mut old = machinery::config::MachineConfig::parse("split.toml", &split).unwrap();
    (old.cluster.ca_cert, old.cluster.ca_key) = (None, None);
    let cfg = op.path("node.toml");
    std::fs::write(&cfg, old.to_toml())?;
    let v = osctl(&op.osctlconfig(), &["validate", "-f", cfg.to_str().unwrap()]).ok()?;
    assert!(v.stderr.contains("warning:") && v.stderr.contains("osctl gen kube-ca"), "{v:?}");

    let (node, url) = control_plane(&op, &cfg)?;
    admin_kubeconfig(&op, &node, &url)?;
    let issuer = machinery::pki::cert_info(&std::fs::read_to_string(op.path("kubectl.crt"))?)?.issuer;
    let machine_ca = machinery::pki::cert_info(&std::fs::read_to_string(op.path("ca.crt"))?)?;
    assert_eq!(issuer, machine_ca.subject, "the one CA signs kubectl's certificate");
    kubectl_with(&url, &op.path("ca.crt"), &op.path("kubectl.crt"), &op.path("kubectl.key"))?.ok()?;
    Ok(())
}

/// The certificate apid presents now (PEM), as openssl sees it with the admin's certificate.
fn presented(op: &Operator, node: &HostNode) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &node.addr()])
        .arg("-cert")
        .arg(op.path("admin.crt"))
        .arg("-key")
        .arg(op.path("admin.key"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate: {text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
    text[begin..end].to_string()
}

#[test]
fn apid_serving_certificate_is_renewed_with_no_call_failing() -> anyhow::Result<()> {
    let (op, mut node, _) = configured_node()?;
    node.stop()?;
    node.extra_args = vec!["--apid-cert-lifetime".into(), "20s".into()];
    node.boot()?;
    wait_configured(&op, &node)?;
    let pid = apid_pid(&op, &node);
    let (addr, cfg) = (node.addr(), op.osctlconfig());
    let mut seen = vec![presented(&op, &node)];
    let first = machinery::pki::cert_info(&format!("{}-----END CERTIFICATE-----\n", seen[0]))?;
    assert!(first.not_after - first.not_before < 400, "20 s, backdated at most 5 min: {first:?}");
    let (mut calls, started) = (0, std::time::Instant::now());
    // Past two lifetimes: the first certificate has expired by the end.
    while started.elapsed() < Duration::from_secs(50) {
        for args in [&["-n", &addr, "version"][..], &["-n", &addr, "services"][..]] {
            let r = osctl(&cfg, args);
            assert_eq!(r.code, 0, "osctl {args:?} after {:?}: {r:?}", started.elapsed());
            calls += 1;
        }
        let now = presented(&op, &node);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    eprintln!("figure: {calls} osctl calls in {:?}; {} apid certificates seen", started.elapsed(), seen.len());
    assert!(seen.len() >= 3, "renewed at least twice: {} certificates", seen.len());
    assert_eq!(apid_pid(&op, &node), pid, "apid was not restarted");
    assert!(!node.log().contains("renewing apid's serving certificate"), "no renewal failed: {}", node.log());
    Ok(())
}

/// The admin kubeconfig's kubectl, with the answer's stdout.
fn kubectl_ok(op: &Operator, args: &[&str]) -> anyhow::Result<String> {
    Ok(kubectl(&op.path("admin.kubeconfig"), args)?.ok()?.stdout)
}

/// The configmaps of `default`, sorted.
fn configmaps(op: &Operator) -> anyhow::Result<Vec<String>> {
    let out = kubectl_ok(op, &["get", "configmaps", "-n", "default", "-o", "name"])?;
    let mut names: Vec<String> = out.lines().filter(|l| !l.contains("kube-root-ca")).map(str::to_string).collect();
    names.sort();
    Ok(names)
}

fn node_events(op: &Operator, node: &HostNode) -> String {
    osctl(&op.osctlconfig(), &["-n", &node.addr(), "events"]).stdout
}

#[test]
fn backup_over_the_machine_api_then_wipe_and_restore_gives_back_every_object() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let (mut node, url) = control_plane(&op, &op.gen_config("node.toml", 1)?)?;
    admin_kubeconfig(&op, &node, &url)?;
    for i in 0..10 {
        kubectl_ok(&op, &["create", "configmap", &format!("cm-{i}"), &format!("--from-literal=k=v{i}")])?;
    }
    kubectl_ok(&op, &["create", "secret", "generic", "s1", "--from-literal=password=hunter2"])?;
    let before = configmaps(&op)?;
    assert_eq!(before.len(), 10, "{before:?}");
    let (cfg, addr) = (op.osctlconfig(), node.addr());
    let file = op.path("cluster.backup");
    let r = osctl(&cfg, &["-n", &addr, "backup", "--out", file.to_str().unwrap()]).ok()?;
    assert!(r.stdout.contains("cluster store backed up to"), "{r:?}");
    let bytes = std::fs::read(&file)?;
    assert!(bytes.starts_with(b"plinth-store-backup/v1\n"), "the store's backup format");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600, "it holds every Secret");
    }
    kubectl_ok(&op, &["create", "configmap", "after-the-backup"])?;

    // Refused with the reason, the store untouched: not a backup, a
    // damaged one, one of another cluster.
    let not_a_backup = op.path("notes.txt");
    std::fs::write(&not_a_backup, "hello")?;
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let damaged_file = op.path("damaged.backup");
    std::fs::write(&damaged_file, &damaged)?;
    let other_ca = machinery::pki::generate_ca("another cluster")?;
    std::fs::write(op.path("other-ca.crt"), &other_ca.cert_pem)?;
    let other = op.path("other.backup");
    let data_dir = node.state.path().join("orchestrator");
    let o = std::process::Command::new(plinth_tests::bin("orchestrator"))
        .arg("backup")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--ca-cert")
        .arg(op.path("other-ca.crt"))
        .arg("--out")
        .arg(&other)
        .output()?;
    assert!(o.status.success(), "{o:?}");
    for (bad, why) in [
        (&not_a_backup, "not a Plinth store backup"),
        (&damaged_file, "the checksum does not match"),
        (&other, "is a backup of another cluster"),
    ] {
        let r = osctl(&cfg, &["-n", &addr, "restore", bad.to_str().unwrap()]);
        assert_eq!(r.code, 4, "refused: {r:?}");
        assert!(r.stderr.contains(why), "{why}: {r:?}");
        assert!(!r.stderr.contains("Error:"), "the orchestrator's wording only: {r:?}");
    }
    let services = osctl(&cfg, &["-n", &addr, "-o", "json", "services"]).json()?;
    let orchestrator = services.as_array().unwrap().iter().find(|s| s["name"] == "orchestrator").unwrap().clone();
    assert_eq!(orchestrator["restarts"], 0, "a refused file does not stop the orchestrator: {orchestrator}");
    assert!(configmaps(&op)?.contains(&"configmap/after-the-backup".to_string()), "nothing changed");

    // Wiped: a fresh store.
    node.stop()?;
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    node.boot()?;
    wait_configured(&op, &node)?;
    admin_kubeconfig(&op, &node, &url)?;
    assert_eq!(configmaps(&op)?, Vec::<String>::new(), "the store was wiped");

    let r = osctl(&cfg, &["-n", &addr, "restore", file.to_str().unwrap()]).ok()?;
    assert!(r.stdout.contains("restored") && r.stdout.contains("the orchestrator started again"), "{r:?}");
    let back = wait_for("the API to serve the restored store", Duration::from_secs(60), || {
        configmaps(&op).ok().filter(|c| !c.is_empty())
    })
    .map_err(|e| e.context(node.log()))?;
    assert_eq!(back, before, "every object of the backup, and nothing after it");
    let secret = kubectl_ok(&op, &["get", "secret", "s1", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(secret, "aHVudGVyMg==");
    assert!(node_events(&op, &node).contains("restored"), "{}", node_events(&op, &node));
    Ok(())
}

#[test]
fn a_worker_has_no_store_to_back_up() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let mut node = HostNode::start(&op.path("ops.pub"))?;
    node.stop()?;
    let orchestrator = plinth_tests::bin("orchestrator").display().to_string();
    node.extra_args = vec!["--orchestrator".into(), orchestrator];
    node.boot()?;
    let worker = op.path("worker.toml");
    let secrets = op.dir.path().to_str().unwrap();
    osctl(
        &op.osctlconfig(),
        &[
            "gen",
            "config",
            "--cluster",
            "demo",
            "--role",
            "worker",
            "--hostname",
            "w1",
            "--endpoint",
            "https://127.0.0.1:1",
            "--token",
            "abcdef.0123456789abcdef",
            "--cert-san",
            "127.0.0.1",
            "--secrets",
            secrets,
            "--out",
            worker.to_str().unwrap(),
        ],
    )
    .ok()?;
    apply(&op, &node, &worker, &["--insecure"]).ok()?;
    wait_configured(&op, &node)?;
    let out = op.path("w.backup");
    let r = osctl(&op.osctlconfig(), &["-n", &node.addr(), "backup", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("this node is a worker: it holds no cluster store"), "{r:?}");
    assert!(!out.exists() && !op.path("w.partial").exists(), "no file written");
    Ok(())
}

#[test]
fn a_damaged_store_at_boot_is_reported_with_the_snapshot_to_restore() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let (mut node, url) = control_plane(&op, &op.gen_config("node.toml", 1)?)?;
    admin_kubeconfig(&op, &node, &url)?;
    let data_dir = node.state.path().join("orchestrator");
    wait_for("the API", Duration::from_secs(60), || kubectl_ok(&op, &["get", "namespace", "kube-system"]).ok())
        .map_err(|e| e.context(node.log()))?;
    // The API server takes its first automatic snapshot as it starts
    // (written as `.tmp`, then renamed into place: only a `.db` is one).
    wait_for("the first automatic snapshot", Duration::from_secs(60), || {
        let mut entries = std::fs::read_dir(data_dir.join("snapshots")).ok()?.flatten();
        entries.find(|e| e.path().extension().is_some_and(|x| x == "db")).map(|_| ())
    })?;
    node.stop()?;
    let db = data_dir.join("state.db");
    let mut bytes = std::fs::read(&db)?;
    bytes[..100].fill(0x5a);
    std::fs::write(&db, &bytes)?;
    // A server stopped before its first checkpoint leaves page 1 in the
    // WAL, and SQLite reads it from there: the file's header would never
    // be read (the store opens, rightly). The WAL's header is damaged too,
    // so that SQLite drops the WAL and reads the file's.
    let wal = data_dir.join("state.db-wal");
    let mut frames = std::fs::read(&wal).unwrap_or_default();
    if !frames.is_empty() {
        let header = frames.len().min(32);
        frames[..header].fill(0x5a);
        std::fs::write(&wal, &frames)?;
    }
    node.boot()?;
    wait_configured(&op, &node)?;
    let (cfg, addr) = (op.osctlconfig(), node.addr());
    let problem = wait_for("osctl version to report the damaged store", Duration::from_secs(30), || {
        let v = osctl(&cfg, &["-n", &addr, "-o", "json", "version"]).json().ok()?;
        v[0]["store_problem"].as_str().filter(|p| !p.is_empty()).map(str::to_string)
    })
    .map_err(|e| e.context(node.log()))?;
    assert!(problem.starts_with("the cluster store is damaged: "), "{problem}");
    assert!(problem.contains(&format!("{} is corrupt", db.display())), "names the file: {problem}");
    let snapshot = problem
        .split("osctl restore --snapshot ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("the command to restore the snapshot: {problem}"))
        .to_string();
    let table = osctl(&cfg, &["-n", &addr, "version"]);
    assert!(table.stderr.contains("osctl restore --snapshot"), "{table:?}");
    plinth_tests::wait_event(|| osctl(&cfg, &["-n", &addr, "events"]), "the cluster store is damaged")?;
    let logs = osctl(&cfg, &["-n", &addr, "logs", "orchestrator"]).stdout;
    assert!(logs.contains("is corrupt") && logs.contains("snapshot"), "{logs}");
    // Waiting, not crash-looping.
    std::thread::sleep(Duration::from_secs(3));
    let services = osctl(&cfg, &["-n", &addr, "-o", "json", "services"]).json()?;
    let o = services.as_array().unwrap().iter().find(|s| s["name"] == "orchestrator").unwrap().clone();
    assert_eq!((o["state"].as_str(), o["restarts"].as_u64()), (Some("running"), Some(0)), "{o}");

    let r = osctl(&cfg, &["-n", &addr, "restore", "--snapshot", &snapshot]).ok()?;
    assert!(r.stdout.contains("an intact store snapshot"), "{r:?}");
    wait_for("the API to serve the snapshot", Duration::from_secs(60), || {
        kubectl_ok(&op, &["get", "namespace", "kube-system"]).ok()
    })
    .map_err(|e| e.context(node.log()))?;
    let v = osctl(&cfg, &["-n", &addr, "-o", "json", "version"]).json()?;
    assert_eq!(v[0]["store_problem"], "", "{v}");
    plinth_tests::wait_event(|| osctl(&cfg, &["-n", &addr, "events"]), "the cluster store opens again")?;
    Ok(())
}

#[test]
fn osctl_certs_lists_every_certificate_with_its_expiry() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let (mut node, url) = control_plane(&op, &op.gen_config("node.toml", 1)?)?;
    node.stop()?;
    node.extra_args.extend(["--apid-cert-lifetime".into(), "20m".into()]);
    node.boot()?;
    wait_configured(&op, &node)?;
    admin_kubeconfig(&op, &node, &url)?;
    let (cfg, addr) = (op.osctlconfig(), node.addr());
    let v = osctl(&cfg, &["-n", &addr, "-o", "json", "certs"]).json()?;
    let rows = v.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {v}")).clone();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "machine API CA",
            "apid (serving)",
            "Kubernetes CA",
            "kubernetes API server (serving)",
            "admin kubeconfig (osctl kubeconfig)"
        ]
    );
    let pem_info = |file: &str| machinery::pki::cert_info(&std::fs::read_to_string(op.path(file)).unwrap()).unwrap();
    for (name, file, renewed) in [("machine API CA", "ca.crt", false), ("Kubernetes CA", "kube-ca.crt", false)] {
        let (r, info) = (row(name), pem_info(file));
        assert_eq!((r["not_after"].as_i64(), r["subject"].as_str()), (Some(info.not_after), Some(&*info.subject)));
        assert_eq!(r["renewed"], renewed);
    }
    // apid's: the 20 minutes asked for, and the very certificate apid presents.
    let apid = row("apid (serving)");
    let presented = machinery::pki::cert_info(&format!("{}-----END CERTIFICATE-----\n", presented(&op, &node)))?;
    assert_eq!(apid["not_after"].as_i64(), Some(presented.not_after), "{apid}");
    let left = apid["seconds_left"].as_i64().unwrap();
    assert!((1100..=1200).contains(&left), "20 minutes: {apid}");
    assert_eq!(apid["renewed"], true);
    // The API server's (a year by default) and the admin kubeconfig's, of the Kubernetes CA.
    let kube_ca = pem_info("kube-ca.crt").subject;
    let api = row("kubernetes API server (serving)");
    assert_eq!(api["issuer"], kube_ca.as_str());
    assert!(api["seconds_left"].as_i64().unwrap() > 300 * 86400, "{api}");
    let admin = row("admin kubeconfig (osctl kubeconfig)");
    let handed_out = pem_info("kubectl.crt");
    assert_eq!(admin["not_after"].as_i64(), Some(handed_out.not_after), "what osctl kubeconfig handed out: {admin}");
    assert_eq!((admin["issuer"].as_str(), admin["renewed"].as_bool()), (Some(&*kube_ca), Some(true)));
    // Ten-year CAs, renewed leaves: nothing to warn about.
    let table = osctl(&cfg, &["-n", &addr, "certs"]).ok()?;
    assert!(table.stdout.contains("apid (serving)") && table.stdout.contains("RENEWED"), "{table:?}");
    assert!(!table.stderr.contains("warning"), "{table:?}");
    Ok(())
}

/// An osctlconfig whose client certificate carries `role`.
fn role_config(op: &Operator, name: &str, role: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = op.dir.path().to_str().unwrap();
    osctl(Path::new("/nonexistent"), &["gen", "cert", "--name", name, "--role", role, "--ca-dir", dir, "--out", dir])
        .ok()?;
    let cfg = op.path(&format!("{name}.osctlconfig"));
    std::fs::write(
        &cfg,
        format!(
            "[contexts.r]\nca = \"ca.crt\"\ncrt = \"{name}.crt\"\nkey = \"{name}.key\"\nsigning_key = \"ops.key\"\n"
        ),
    )?;
    Ok(cfg)
}

#[test]
fn reset_is_an_admins_and_wipes_the_node_back_into_maintenance_mode() -> anyhow::Result<()> {
    let (op, node, cfg) = configured_node()?;
    let addr = node.addr();
    let state = node.state.path().to_path_buf();
    // Readers and operators may not reset a node.
    for (name, role) in [("rita", "reader"), ("otto", "operator")] {
        let r = osctl(&role_config(&op, name, role)?, &["-n", &addr, "reset", "--yes"]);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains(&format!("role {role} may not call Reset")), "{r:?}");
    }
    // Not on a terminal and without --yes: nothing is asked, nothing done.
    let r = osctl(&op.osctlconfig(), &["-n", &addr, "reset"]);
    assert!(r.code != 0 && r.stderr.contains("pass --yes"), "{r:?}");
    wait_configured(&op, &node)?;

    // What describes the disk's slots stays: the security floor never falls.
    std::fs::write(state.join("security-floor"), "7\n")?;
    assert!(state.join("config/config.signed").exists());
    let r = osctl(&op.osctlconfig(), &["-n", &addr, "reset", "--yes"]).ok()?;
    assert!(r.stdout.contains("comes back in maintenance mode"), "{r:?}");
    wait_mode(&op, &node, "maintenance", true)?;
    // (init made its config directory again, empty.)
    for gone in ["config/config.signed", "config/last-good.signed", "config/trust.json"] {
        assert!(!state.join(gone).exists(), "{gone} is gone");
    }
    assert!(!state.join("orchestrator").exists());
    assert_eq!(std::fs::read_to_string(state.join("security-floor"))?, "7\n");

    // Nothing left to reset: maintenance mode says so.
    let r = osctl(&op.osctlconfig(), &["--insecure", "-n", &addr, "reset", "--yes"]);
    assert!(r.code != 0 && r.stderr.contains("maintenance mode"), "{r:?}");

    // It joins another cluster: a config of another cluster.id is taken.
    let text = std::fs::read_to_string(&cfg)?;
    let ours = machinery::config::MachineConfig::parse("node.toml", &text)?.cluster.id.expect("gen config sets it");
    let other = op.path("other-cluster.toml");
    std::fs::write(&other, text.replace(&ours, "c-0123456789abcdef01234567"))?;
    apply(&op, &node, &other, &["--insecure"]).ok()?;
    wait_configured(&op, &node)?;
    Ok(())
}
