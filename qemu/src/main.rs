use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Boots Plinth images in QEMU.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Where VMs are kept (default: ~/.plinth/vms).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM from an image (copy-on-write; the machine follows the
    /// image: q35 + OVMF, or for arm64 images -M virt / -M raspi4b with the
    /// boot files read from the image) and wait until its API answers.
    Up {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value = "n1")]
        name: String,
        /// Guest memory, e.g. 256M or 1G.
        #[arg(long, default_value = "256M", value_parser = parse_memory)]
        memory: u32,
        /// How the disk is attached: virtio, nvme, ahci or usb.
        #[arg(long, default_value = "virtio")]
        disk: plinth_qemu::Disk,
        /// A second NIC (the guest's eth1) on this guest-to-guest network,
        /// `GROUP:PORT` from `qemu cluster-net`: VMs given the same one
        /// share a layer-2 segment on the host's loopback.
        #[arg(long, value_name = "GROUP:PORT")]
        cluster_net: Option<plinth_qemu::ClusterNet>,
        /// Throttle the disk like a slow SD card (200 I/Os and 4 MiB per
        /// second, QEMU's `throttling.*` drive options).
        #[arg(long, conflicts_with = "disk_throttle")]
        sd_card: bool,
        /// Throttle the disk to `IOPS,BYTES_PER_SECOND`, e.g. 300,8388608.
        #[arg(long, value_name = "IOPS,BPS")]
        disk_throttle: Option<plinth_qemu::Throttle>,
    },
    /// Print a fresh guest-to-guest network (`GROUP:PORT`) for `up --cluster-net`.
    ClusterNet,
    /// Stop a VM and delete its overlay.
    Down {
        #[arg(long, default_value = "n1")]
        name: String,
    },
    /// List the recorded VMs.
    List,
}

/// "256M", "1G" or a plain number of MiB.
fn parse_memory(s: &str) -> Result<u32, String> {
    let t = s.trim_end_matches("iB").trim_end_matches('B');
    let (n, mult) = match t.chars().last() {
        Some('G' | 'g') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    n.parse::<u32>().map(|v| v * mult).map_err(|_| format!("{s:?} is not a memory size like 256M or 1G"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let state = cli.state_dir.unwrap_or_else(plinth_qemu::default_state_dir);
    match cli.command {
        Cmd::Up { image, name, memory, disk, cluster_net, sd_card, disk_throttle } => {
            let dir = state.join(&name);
            if dir.join("vm.json").exists() {
                anyhow::bail!("a VM named {name} exists: `qemu down --name {name}` first");
            }
            let opts = plinth_qemu::VmOptions { image, name: name.clone(), memory_mib: memory, dir: dir.clone() };
            let throttle = disk_throttle.or(sd_card.then_some(plinth_qemu::Throttle::SD_CARD));
            let mut vm = plinth_qemu::Vm::start_standalone(opts, disk, cluster_net, throttle)?;
            eprintln!("booting {name} (serial log: {})…", vm.serial.display());
            vm.wait_for_api(Duration::from_secs(180))?;
            let record = vm.detach();
            plinth_qemu::save_record(&dir, &record)?;
            println!("{name} is up; its API is at {}", record.api);
            println!("  osctl -n {} --insecure version", record.api);
            println!("  osctl -n {} --insecure apply-config -f node.toml", record.api);
            if let Some((_, kube)) = record.ports.iter().find(|(guest, _)| *guest == machinery::layout::KUBE_API_PORT) {
                println!("then, once configured as a control plane, point kubectl at it:");
                println!("  osctl -n {} kubeconfig --server https://127.0.0.1:{kube} --out kubeconfig", record.api);
                println!("  kubectl --kubeconfig kubeconfig get nodes,namespaces");
            }
            if let Some(t) = throttle {
                println!("its disk is throttled to {} I/Os and {} bytes per second", t.iops, t.bps);
            }
            if let Some(net) = &record.cluster_net {
                println!("its eth1 is on the cluster network {net}");
            }
            println!("QEMU pid {}, serial log {}, files in {}", record.pid, record.serial.display(), dir.display());
            println!("stop it with: qemu down --name {name}");
        }
        Cmd::ClusterNet => println!("{}", plinth_qemu::ClusterNet::new()?),
        Cmd::Down { name } => {
            plinth_qemu::down(&state, &name)?;
            println!("{name} stopped");
        }
        Cmd::List => {
            for r in plinth_qemu::list(&state) {
                println!("{}\tpid {}\tapi {}\t{}", r.name, r.pid, r.api, r.serial.display());
            }
        }
    }
    Ok(())
}
