//! A real Plinth image booted in QEMU (UEFI, systemd-boot, UKI, our PID 1)
//! and driven with the real osctl: maintenance mode, a signed config, an
//! unsigned one refused, services, logs, dmesg, a reboot that keeps the
//! config, and a power-off.

use std::time::Duration;

use anyhow::Context as _;

use machinery::api;
use osctl::connect::{self, Credentials, LocalChecks};
use plinth_qemu::{Vm, VmOptions};
use plinth_tests::cluster::tail;
use plinth_tests::{Operator, build_image, kubectl, osctl, wait_for};

const BOOT: Duration = Duration::from_secs(240);

#[test]
fn image_boots_takes_a_signed_config_and_keeps_it_across_a_reboot() -> anyhow::Result<()> {
    let op = Operator::new()?;
    let work = tempfile::tempdir()?;
    let image = work.path().join("plinth.img");
    build_image(&op, &image)?;
    let mut vm = Vm::start(VmOptions { image, name: "e2e".into(), memory_mib: 256, dir: work.path().join("vm") })?;
    vm.wait_for_api(BOOT)?;
    let addr = vm.api_addr();
    let c = op.osctlconfig();

    // Maintenance mode: version answers without a client certificate.
    let v = osctl(&c, &["-n", &addr, "--insecure", "-o", "json", "version"]).ok()?.json()?;
    assert_eq!(v[0]["mode"], "maintenance", "{v}");
    assert_eq!(v[0]["arch"], "x86_64");

    // An unsigned config and one signed by another key are refused.
    let cfg = op.gen_dhcp_config("node.toml", "qnode")?;
    let text = std::fs::read(&cfg)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut client = connect::connect(&addr, &Credentials::Insecure, LocalChecks::On).await?;
        let e = client
            .apply_config(api::ApplyConfigRequest { config: text.clone(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("not signed"), "{e:?}");
        anyhow::Ok(())
    })?;
    let other = Operator::new()?;
    let r = osctl(
        &c,
        &[
            "-n",
            &addr,
            "--insecure",
            "apply-config",
            "-f",
            cfg.to_str().unwrap(),
            "--key",
            other.path("ops.key").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("only trusts key"), "{r:?}");

    // The signed config is applied; the node switches to mutual TLS.
    osctl(&c, &["-n", &addr, "--insecure", "apply-config", "-f", cfg.to_str().unwrap()]).ok()?;
    let configured = || {
        let r = osctl(&c, &["-n", &addr, "-o", "json", "version"]);
        let v = r.json().ok()?;
        (v[0]["mode"] == "configured").then_some(v)
    };
    let v = wait_for("mutual TLS with the new config", Duration::from_secs(60), configured)?;
    assert_eq!((v[0]["config_version"].as_u64(), v[0]["hostname"].as_str()), (Some(1), Some("qnode")));

    let services = osctl(&c, &["-n", &addr, "-o", "json", "services"]).ok()?.json()?;
    assert_eq!(services[0]["name"], "apid");
    assert_eq!(services[0]["state"], "running");

    // A control-plane node runs the orchestrator; its admin kubeconfig
    // (a client certificate from the cluster CA) works with real kubectl.
    let kc = op.path("kubeconfig");
    let kc_str = kc.to_str().context("utf-8")?;
    wait_for("the control plane's kubeconfig", BOOT, || {
        osctl(&c, &["-n", &addr, "kubeconfig", "--server", &vm.kube_url(), "--out", kc_str]).ok().ok()
    })
    .with_context(|| tail(&vm.serial_log()))?;
    let ns = wait_for("kubectl get namespaces", Duration::from_secs(60), || {
        kubectl(&kc, &["get", "namespaces", "-o", "name"]).ok()?.ok().ok()
    })?;
    assert!(ns.stdout.contains("namespace/default") && ns.stdout.contains("namespace/kube-system"), "{ns:?}");
    kubectl(&kc, &["create", "configmap", "hello", "--from-literal=k=v"])?.ok()?;
    let got = kubectl(&kc, &["get", "configmap", "hello", "-o", "jsonpath={.data.k}"])?.ok()?;
    assert_eq!(got.stdout, "v");
    let services = osctl(&c, &["-n", &addr, "-o", "json", "services"]).ok()?.json()?;
    let orchestrator = services.as_array().into_iter().flatten().find(|s| s["name"] == "orchestrator");
    assert_eq!(orchestrator.map(|s| &s["state"]), Some(&serde_json::json!("running")), "{services}");
    let logs = osctl(&c, &["-n", &addr, "logs", "apid"]).ok()?.stdout;
    assert!(logs.contains("rpc=\"ServiceList\""), "{logs}");
    let dmesg = osctl(&c, &["-n", &addr, "dmesg"]).ok()?.stdout;
    assert!(dmesg.contains("Plinth") && dmesg.contains("slot a: root image"), "{dmesg}");
    assert!(dmesg.contains("DHCP lease"), "{dmesg}");

    // Reboot: the same config comes back from STATE.
    osctl(&c, &["-n", &addr, "reboot"]).ok()?;
    vm.wait_for_serial_count("Plinth 0.1.0 starting", 2, BOOT)?;
    let v = wait_for("the node back after its reboot", BOOT, configured).with_context(|| tail(&vm.serial_log()))?;
    assert_eq!(v[0]["config_version"].as_u64(), Some(1));
    assert_eq!(vm.serial_log().matches("Plinth 0.1.0 starting").count(), 2, "one reboot, two boots");
    let shown = machinery::config::MachineConfig::parse("node.toml", std::str::from_utf8(&text)?)?.redacted();
    assert_eq!(osctl(&c, &["-n", &addr, "get-config"]).ok()?.stdout, shown.to_toml());
    let events = osctl(&c, &["-n", &addr, "events"]).ok()?.stdout;
    assert!(events.contains("config version 1 loaded"), "{events}");
    // The cluster's state is on EPHEMERAL: it survives the reboot.
    let got = wait_for("the control plane back after the reboot", Duration::from_secs(120), || {
        kubectl(&kc, &["get", "configmap", "hello", "-o", "jsonpath={.data.k}"]).ok()?.ok().ok()
    })?;
    assert_eq!(got.stdout, "v");

    // Power off: init stops apid, unmounts, and QEMU exits.
    osctl(&c, &["-n", &addr, "shutdown"]).ok()?;
    vm.wait_exit(Duration::from_secs(60))?;
    assert!(vm.serial_log().contains("reboot: Power down"), "{}", vm.serial_log());
    Ok(())
}
