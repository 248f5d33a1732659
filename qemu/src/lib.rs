//! Boots Plinth disk images in QEMU: a copy-on-write overlay per VM, OVMF
//! with per-VM variables, virtio disk/network/RNG, an i6300esb watchdog,
//! the serial console in a file, and apid's port forwarded to a free port
//! on 127.0.0.1. TCG unless `PLINTH_QEMU_ACCEL=kvm` (KVM does not run guests
//! on our build machines). Tests and the `qemu` CLI use this same code.
//!
//! A guest reboot stays in the same QEMU process (no `-no-reboot`: `osctl
//! reboot` and A/B fallbacks must come back up on the same disk and port);
//! a guest power-off ends it.
//!
//! arm64 images with the Raspberry Pi's layout (`arm64-virt` under
//! `-M virt -cpu cortex-a72`, `rpi4` under `-M raspi4b`) boot with the
//! harness as their firmware ([`firmware`]): before each boot it reads
//! `autoboot.txt` and the chosen slot's boot partition from a raw copy of
//! the image and passes `-kernel -initrd -dtb -append`; QEMU runs with
//! `-no-reboot` and the harness starts it again after each guest reboot
//! (the `[tryboot]` slot after a `"0 tryboot"` reboot), so upgrades and
//! rollbacks run as on a Pi. The machine follows the image's manifest.

pub mod firmware;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use machinery::config::DEFAULT_API_PORT;
use machinery::layout::KUBE_API_PORT;
use serde::{Deserialize, Serialize};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (and SMM, which guards its variables).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// A Pi-layout VM's disk: a sparse raw copy of the image.
pub const RAW_DISK: &str = "disk.raw";
/// The device tree the Pi 4B's firmware picks (upstream name).
pub const RASPI4B_DTB: &str = "bcm2711-rpi-4-b.dtb";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{tool} is missing: install {package} (scripts/setup-debian.sh installs everything)")]
    Missing { tool: String, package: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("VM {name}: {what} did not happen within {timeout:?}; serial log: {serial}, ending:\n{last}")]
    Timeout { name: String, what: String, timeout: Duration, serial: PathBuf, last: String },
    #[error("VM {name} exited ({status}); serial log: {serial}, ending:\n{last}")]
    Exited { name: String, status: String, serial: PathBuf, last: String },
    #[error("no VM named {0} is recorded")]
    Unknown(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { op, path, source }
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub image: PathBuf,
    pub name: String,
    pub memory_mib: u32,
    /// Where this VM's overlay, firmware variables and serial log live.
    pub dir: PathBuf,
}

/// QEMU's `-accel` for a guest: `PLINTH_QEMU_ACCEL` when set, TCG
/// otherwise. A guest on a cluster network shares the host's cores with
/// the other guests of its cluster: under TCG it runs its two vCPUs
/// round-robin on one thread (`thread=single`). With one thread per vCPU,
/// four guests on two cores starved a halted vCPU's timer for 20 s at a
/// time (RCU stalls, a control plane missing its 300 s boot in CI).
fn accel(env: Option<String>, on_cluster_net: bool) -> String {
    match env {
        Some(a) => a,
        None if on_cluster_net => "tcg,thread=single".into(),
        None => "tcg".into(),
    }
}

/// A guest-to-guest network: a second virtio NIC (the guest's `eth1`) on a
/// QEMU socket netdev that sends its Ethernet frames to a UDP multicast
/// group on the host's loopback (`-netdev socket,mcast=…,localaddr=127.0.0.1`),
/// so every VM given the same group shares one layer-2 segment and nothing
/// leaves the host. Works in QEMU 7.2 and 10, needs no root, no bridge and
/// no tap device. The first NIC stays QEMU's user network with the port
/// forwards to 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNet {
    /// The multicast group and UDP port: pick one per cluster
    /// ([`ClusterNet::new`]); two clusters on one host must not share it.
    pub group: std::net::SocketAddrV4,
}

impl std::str::FromStr for ClusterNet {
    type Err = String;
    fn from_str(s: &str) -> Result<ClusterNet, String> {
        let group: std::net::SocketAddrV4 =
            s.parse().map_err(|_| format!("{s:?}: the cluster network is GROUP:PORT, e.g. 239.192.0.1:40000"))?;
        if !group.ip().is_multicast() {
            return Err(format!("{s:?}: {} is not a multicast address (224.0.0.0/4)", group.ip()));
        }
        Ok(ClusterNet { group })
    }
}

impl std::fmt::Display for ClusterNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.group.fmt(f)
    }
}

impl ClusterNet {
    /// A network of its own: group 239.192.x.y (organisation-local scope)
    /// and a free UDP port on 127.0.0.1.
    pub fn new() -> Result<ClusterNet, VmError> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io("bind", Path::new("127.0.0.1:0")))?;
        let port = sock.local_addr().map_err(io("bind", Path::new("127.0.0.1:0")))?.port();
        let [hi, lo] = port.to_be_bytes();
        Ok(ClusterNet { group: std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(239, 192, hi, lo), port) })
    }

    /// The second NIC's MAC for VM `name`: locally administered, from the
    /// name (QEMU gives every NIC 52:54:00:12:34:56 otherwise, and guests
    /// with one MAC on one segment do not reach each other).
    pub fn mac(name: &str) -> String {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let b = h.finish().to_be_bytes();
        format!("52:54:01:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
    }

    fn args(&self, name: &str) -> [String; 4] {
        [
            "-netdev".into(),
            format!("socket,id=n1,mcast={},localaddr=127.0.0.1", self.group),
            "-device".into(),
            format!("virtio-net-pci,netdev=n1,mac={}", ClusterNet::mac(name)),
        ]
    }
}

/// What `qemu up` records (`<state dir>/<name>/vm.json`) so `qemu down`
/// can find the VM, and a person its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub pid: u32,
    /// apid's address on the host (`127.0.0.1:<port>`).
    pub api: String,
    /// Guest port → host port forwards.
    #[serde(default)]
    pub ports: Vec<(u16, u16)>,
    pub serial: PathBuf,
    #[serde(default)]
    pub dir: PathBuf,
    #[serde(default)]
    pub image: PathBuf,
    /// The guest-to-guest network of its second NIC (`GROUP:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_net: Option<String>,
}

/// The QEMU machine an image boots on, from its manifest's board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// x86-64 q35 with OVMF (UEFI images).
    Q35,
    /// `-M virt -cpu cortex-a72`: arm64 images (`arm64-virt`).
    Virt,
    /// `-M raspi4b -m 2G`: the `rpi4` image's own kernel, DTB and
    /// initramfs (QEMU emulates no Ethernet on it).
    Raspi4b,
}

impl Machine {
    /// The machine for an image: its manifest (`<image>.manifest.json`)
    /// names the board and architecture; no manifest means x86-64.
    pub fn for_image(image: &Path) -> Machine {
        let manifest = PathBuf::from(format!("{}.manifest.json", image.display()));
        let Ok(text) = std::fs::read_to_string(manifest) else { return Machine::Q35 };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match (v["board"].as_str(), v["arch"].as_str()) {
            (Some("rpi4"), _) => Machine::Raspi4b,
            (_, Some("arm64")) => Machine::Virt,
            _ => Machine::Q35,
        }
    }

    /// Whether the harness plays the Raspberry Pi firmware for it.
    pub fn pi_layout(self) -> bool {
        self != Machine::Q35
    }
}

/// A running VM. Dropping it kills QEMU unless [`Vm::detach`] was called.
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    pub api_port: u16,
    /// Host port forwarded to the guest's Kubernetes API (6443).
    pub kube_port: u16,
    pub serial: PathBuf,
    opts: VmOptions,
    disk: Disk,
    child: Option<Child>,
    pub machine: Machine,
    /// Pi layout: QEMU exits on a guest reboot and the harness boots the
    /// next slot (off for a VM that outlives this process: `qemu up`).
    supervised: bool,
    /// Pi layout: the next boot is a tryboot (the trial slot).
    tryboot: bool,
    /// The serial log's length when the current boot started.
    serial_mark: u64,
    /// The slot the harness booted last (Pi layout).
    pub booted_slot: Option<machinery::layout::Slot>,
    /// UEFI Secure Boot on: OVMF's secboot build with SMM, and the VM's
    /// variable store copied from one with the operator's keys enrolled.
    secure_boot: Option<PathBuf>,
    /// The guest-to-guest network of its second NIC.
    pub cluster_net: Option<ClusterNet>,
    /// The disk's I/O limits (an SD card's), if any.
    pub throttle: Option<Throttle>,
}

/// How the VM's disk is attached: virtio by default; the others stand in
/// for real machines' NVMe, SATA and USB sticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Disk {
    #[default]
    Virtio,
    Nvme,
    /// SATA through an ICH9 AHCI controller.
    Ahci,
    /// A USB stick (usb-storage) on an xHCI controller.
    Usb,
}

impl std::str::FromStr for Disk {
    type Err = String;
    fn from_str(s: &str) -> Result<Disk, String> {
        match s {
            "virtio" => Ok(Disk::Virtio),
            "nvme" => Ok(Disk::Nvme),
            "ahci" | "sata" => Ok(Disk::Ahci),
            "usb" => Ok(Disk::Usb),
            _ => Err(format!("{s:?}: the disk is virtio, nvme, ahci or usb")),
        }
    }
}

impl Disk {
    fn args(self, file: &Path, throttle: Option<Throttle>) -> Vec<String> {
        let limits = throttle.map(|t| t.drive_options()).unwrap_or_default();
        let drive = |iface: &str| format!("file={},format=qcow2,if={iface}{limits}", file.display());
        let none = format!("{},id=d0", drive("none"));
        match self {
            Disk::Virtio => vec!["-drive".into(), drive("virtio")],
            Disk::Nvme => vec!["-drive".into(), none, "-device".into(), "nvme,drive=d0,serial=plinth".into()],
            Disk::Ahci => vec!["-drive".into(), none, "-device".into(), "ide-hd,drive=d0,bus=ide.0".into()],
            Disk::Usb => vec![
                "-drive".into(),
                none,
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-device".into(),
                "usb-storage,drive=d0,bus=xhci.0,removable=on".into(),
            ],
        }
    }
}

/// A disk throttled like an SD card: QEMU's block throttling
/// (`throttling.iops-total`, `throttling.bps-total` on the drive) caps the
/// I/O operations and bytes per second, reads and writes together, with no
/// burst. QEMU has no option to make a flush itself slow (its throttling
/// counts reads and writes, not flushes; `blkdebug` injects errors, not
/// delays), so a long fsync here is the queue of throttled writes it waits
/// for: the ext4 journal's blocks and commit record are throttled I/Os too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// I/O operations per second.
    pub iops: u32,
    /// Bytes per second.
    pub bps: u64,
}

impl Throttle {
    /// A slow SD card: 200 I/Os and 4 MiB per second (cheap cards manage
    /// 100–500 random 4 KiB writes per second and a few MB/s sustained;
    /// an A1 card promises 500 write IOPS).
    pub const SD_CARD: Throttle = Throttle { iops: 200, bps: 4 << 20 };

    /// The `-drive` options that apply it.
    pub fn drive_options(&self) -> String {
        format!(",throttling.iops-total={},throttling.bps-total={}", self.iops, self.bps)
    }
}

impl std::str::FromStr for Throttle {
    type Err = String;
    /// `IOPS,BYTES_PER_SECOND`, e.g. `200,4194304`.
    fn from_str(s: &str) -> Result<Throttle, String> {
        let bad = || format!("{s:?}: a throttle is IOPS,BYTES_PER_SECOND, e.g. 200,4194304 (both above 0)");
        let (iops, bps) = s.split_once(',').ok_or_else(bad)?;
        let iops: u32 = iops.trim().parse().map_err(|_| bad())?;
        let bps: u64 = bps.trim().parse().map_err(|_| bad())?;
        if iops == 0 || bps == 0 {
            return Err(bad());
        }
        Ok(Throttle { iops, bps })
    }
}

fn free_port() -> Result<u16, VmError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("bind", Path::new("127.0.0.1:0")))
}

fn require(path: &str, package: &str) -> Result<(), VmError> {
    let found = if path.starts_with('/') {
        Path::new(path).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(path).is_file()))
    };
    if found { Ok(()) } else { Err(VmError::Missing { tool: path.into(), package: package.into() }) }
}

impl Vm {
    /// Creates the overlay (first start only) and boots the VM.
    pub fn start(opts: VmOptions) -> Result<Vm, VmError> {
        Vm::start_with(opts, Disk::Virtio)
    }

    /// [`Vm::start`] with the disk attached another way.
    pub fn start_with(opts: VmOptions, disk: Disk) -> Result<Vm, VmError> {
        Vm::start_inner(opts, disk, true, None, None, None)
    }

    /// [`Vm::start`] on a disk as slow as `throttle` (e.g. [`Throttle::SD_CARD`]).
    pub fn start_throttled(opts: VmOptions, throttle: Throttle) -> Result<Vm, VmError> {
        Vm::start_inner(opts, Disk::Virtio, true, None, None, Some(throttle))
    }

    /// [`Vm::start`] with a second NIC on `net`, shared with other VMs.
    pub fn start_on(opts: VmOptions, net: ClusterNet) -> Result<Vm, VmError> {
        Vm::start_inner(opts, Disk::Virtio, true, None, Some(net), None)
    }

    /// [`Vm::start`] with UEFI Secure Boot on: OVMF's Secure Boot build,
    /// its variables first copied from `vars`, a store with the keys
    /// enrolled (`image-builder secure-boot-keys` makes one). UEFI images
    /// only.
    pub fn start_secure_boot(opts: VmOptions, vars: &Path) -> Result<Vm, VmError> {
        Vm::start_inner(opts, Disk::Virtio, true, Some(vars.to_path_buf()), None, None)
    }

    /// Starts a VM that outlives this process (`qemu up`): on a Pi-layout
    /// image QEMU resets in place on a guest reboot and boots the same
    /// slot's files again, as no harness is left to play the firmware.
    /// With `net`, a second NIC on that guest-to-guest network; with
    /// `throttle`, a disk that slow.
    pub fn start_standalone(
        opts: VmOptions,
        disk: Disk,
        net: Option<ClusterNet>,
        throttle: Option<Throttle>,
    ) -> Result<Vm, VmError> {
        Vm::start_inner(opts, disk, false, None, net, throttle)
    }

    fn start_inner(
        mut opts: VmOptions,
        disk: Disk,
        supervised: bool,
        secure_boot: Option<PathBuf>,
        cluster_net: Option<ClusterNet>,
        throttle: Option<Throttle>,
    ) -> Result<Vm, VmError> {
        let machine = Machine::for_image(&opts.image);
        if secure_boot.is_some() {
            if machine.pi_layout() {
                return Err(VmError::Command {
                    what: "Secure Boot".into(),
                    detail: format!(
                        "{} boots the Raspberry Pi way: there is no UEFI to enforce it",
                        opts.image.display()
                    ),
                });
            }
            require(OVMF_CODE_SECBOOT, "ovmf")?;
        }
        if machine == Machine::Raspi4b && cluster_net.is_some() {
            return Err(VmError::Command {
                what: "a cluster network".into(),
                detail: format!("{} boots on -M raspi4b, which has no PCI bus for a second NIC", opts.image.display()),
            });
        }
        if machine.pi_layout() {
            require("qemu-system-aarch64", "qemu-system-arm (from bookworm-backports)")?;
        } else {
            require("qemu-system-x86_64", "qemu-system-x86 (from bookworm-backports)")?;
            require(OVMF_CODE, "ovmf")?;
        }
        require("qemu-img", "qemu-utils")?;
        if machine == Machine::Raspi4b {
            require("fdtput", "device-tree-compiler")?;
            // The only size QEMU's raspi4b accepts.
            opts.memory_mib = 2048;
        }
        std::fs::create_dir_all(&opts.dir).map_err(io("create", &opts.dir))?;
        let image = std::fs::canonicalize(&opts.image).map_err(io("find image", &opts.image))?;
        let qemu_img = |args: &[&str], what: &str| -> Result<(), VmError> {
            let out = Command::new("qemu-img").args(args).output().map_err(io("run qemu-img for", &opts.dir))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(VmError::Command { what: what.into(), detail: String::from_utf8_lossy(&out.stderr).into() })
            }
        };
        if machine.pi_layout() {
            // A raw copy (sparse): the harness reads the boot partitions
            // the guest writes, as the firmware reads the card.
            let raw = opts.dir.join(RAW_DISK);
            if !raw.exists() {
                let out = Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&image)
                    .arg(&raw)
                    .output()
                    .map_err(io("copy the image to", &raw))?;
                if !out.status.success() {
                    return Err(VmError::Command {
                        what: format!("cp {} {}", image.display(), raw.display()),
                        detail: String::from_utf8_lossy(&out.stderr).into(),
                    });
                }
                if machine == Machine::Raspi4b {
                    // An SD card's size is a power of two for QEMU.
                    let len = std::fs::metadata(&raw).map_err(io("stat", &raw))?.len();
                    let size = len.next_power_of_two().to_string();
                    qemu_img(&["resize", "-q", "-f", "raw", &raw.to_string_lossy(), &size], "qemu-img resize")?;
                }
            }
        } else {
            let overlay = opts.dir.join("disk.qcow2");
            let vars = opts.dir.join("OVMF_VARS.fd");
            if !overlay.exists() {
                qemu_img(
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        "raw",
                        "-b",
                        &image.to_string_lossy(),
                        &overlay.to_string_lossy(),
                    ],
                    "qemu-img create",
                )?;
                let from = secure_boot.as_deref().unwrap_or(Path::new(OVMF_VARS));
                std::fs::copy(from, &vars).map_err(io("copy firmware variables to", &vars))?;
            }
        }
        let mut vm = Vm {
            name: opts.name.clone(),
            dir: opts.dir.clone(),
            api_port: free_port()?,
            kube_port: free_port()?,
            serial: opts.dir.join("serial.log"),
            opts,
            disk,
            child: None,
            machine,
            supervised,
            tryboot: false,
            serial_mark: 0,
            booted_slot: None,
            secure_boot,
            cluster_net,
            throttle,
        };
        vm.boot()?;
        Ok(vm)
    }

    /// Starts QEMU over the existing disk (again, after a power cut or, on
    /// a Pi-layout image, a guest reboot).
    pub fn boot(&mut self) -> Result<(), VmError> {
        use std::os::unix::process::CommandExt as _;
        let accel = accel(std::env::var("PLINTH_QEMU_ACCEL").ok(), self.cluster_net.is_some());
        let d = self.dir.clone();
        let net = format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:{DEFAULT_API_PORT},hostfwd=tcp:127.0.0.1:{}-:{KUBE_API_PORT}",
            self.api_port, self.kube_port
        );
        let mut cmd;
        if self.machine.pi_layout() {
            let raw = d.join(RAW_DISK);
            let dtb = (self.machine == Machine::Raspi4b).then_some(RASPI4B_DTB);
            let files = firmware::load(&raw, self.tryboot, dtb, &d)
                .map_err(|e| VmError::Command { what: "reading the boot partitions".into(), detail: e.to_string() })?;
            self.booted_slot = Some(files.slot);
            self.serial_mark = std::fs::metadata(&self.serial).map_or(0, |m| m.len());
            cmd = Command::new("qemu-system-aarch64");
            cmd.args(["-name", &self.name, "-accel", &accel, "-nodefaults", "-display", "none"])
                .args(["-m", &format!("{}M", self.opts.memory_mib)])
                .args(["-chardev", &format!("file,id=ser0,path={},append=on", self.serial.display())])
                .arg("-kernel")
                .arg(&files.kernel);
            if self.machine == Machine::Raspi4b {
                cmd.args(["-append", &firmware::raspi4b_cmdline(&files.cmdline)]);
            } else {
                cmd.args(["-append", &files.cmdline]);
            }
            if self.supervised {
                cmd.arg("-no-reboot");
            }
            if let Some(initrd) = &files.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            if let Some(dtb) = &files.dtb {
                firmware::adjust_for_raspi4b(dtb).map_err(|e| VmError::Command {
                    what: "adjusting the device tree for QEMU".into(),
                    detail: e.to_string(),
                })?;
                cmd.arg("-dtb").arg(dtb);
            }
            let limits = self.throttle.map(|t| t.drive_options()).unwrap_or_default();
            let drive = |iface: &str| format!("file={},format=raw,if={iface}{limits}", raw.display());
            match self.machine {
                Machine::Raspi4b => {
                    // serial0 is the PL011 (Bluetooth on a Pi), serial1 the
                    // mini UART the board's console is on; QEMU's mini UART
                    // cannot carry it (firmware::RASPI4B_CONSOLE).
                    // QEMU's raspi4b has no PCI: no second NIC.
                    cmd.args(["-M", "raspi4b", "-serial", "chardev:ser0", "-serial", "null"])
                        .args(["-drive", &drive("sd")])
                        .args(["-netdev", &net, "-device", "usb-net,netdev=n0"]);
                }
                _ => {
                    cmd.args(["-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-serial", "chardev:ser0"])
                        .args(["-drive", &drive("virtio")])
                        .args(["-netdev", &net])
                        .args([
                            "-device",
                            "virtio-net-pci,netdev=n0",
                            "-device",
                            "virtio-rng-pci",
                            "-device",
                            "i6300esb",
                        ])
                        .args(self.cluster_net.iter().flat_map(|n| n.args(&self.name)));
                }
            }
        } else {
            cmd = Command::new("qemu-system-x86_64");
            let (machine, code) = match self.secure_boot {
                Some(_) => ("q35,smm=on", OVMF_CODE_SECBOOT),
                None => ("q35", OVMF_CODE),
            };
            if self.secure_boot.is_some() {
                // Only code running in SMM may write the variable store.
                cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            cmd.args([
                "-name",
                &self.name,
                "-accel",
                &accel,
                "-machine",
                machine,
                "-smp",
                "2",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-m", &format!("{}M", self.opts.memory_mib)])
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()))
            .args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={code}")])
            .args(["-drive", &format!("if=pflash,format=raw,file={}", d.join("OVMF_VARS.fd").display())])
            .args(self.disk.args(&d.join("disk.qcow2"), self.throttle))
            .args(["-netdev", &net])
            .args(["-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci", "-device", "i6300esb"])
            .args(self.cluster_net.iter().flat_map(|n| n.args(&self.name)));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("qemu.stderr")).map_err(io("create", &d.join("qemu.stderr")))?)
            // Not in the terminal's process group: ^C on a test or CLI does
            // not reach the VM; `qemu down` or Drop stops it.
            .process_group(0);
        let child = cmd.spawn().map_err(io("start", Path::new(cmd.get_program())))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The guest's Kubernetes API as seen from the host.
    pub fn kube_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.kube_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serial log's last 30 lines, for an error: the log itself is
    /// often in a test's temporary directory, gone when the error is read.
    fn serial_tail(&self) -> String {
        last_lines(&self.serial_log(), 30)
    }

    /// The serial console so far.
    pub fn serial_log(&self) -> String {
        std::fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The serial output of the current boot.
    fn this_boot_log(&self) -> String {
        let log = std::fs::read(&self.serial).unwrap_or_default();
        let from = (self.serial_mark as usize).min(log.len());
        String::from_utf8_lossy(&log[from..]).into_owned()
    }

    /// Plays the firmware between a test's polls: a Pi-layout VM whose
    /// guest rebooted (QEMU runs it with `-no-reboot`) is booted again, on
    /// the `[tryboot]` slot after a tryboot. An error when QEMU is gone
    /// otherwise (a power-off, a failure). Waits in this crate call it; a
    /// caller that waits on the guest some other way (osctl, kubectl) must.
    pub fn supervise(&mut self) -> Result<(), VmError> {
        self.check_alive()
    }

    fn check_alive(&mut self) -> Result<(), VmError> {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            self.child = None;
            // QEMU exits 0 on a guest reset (-no-reboot) and on power-off;
            // a QEMU that failed is not a reboot.
            if self.machine.pi_layout() && self.supervised && status.success() {
                // The guest rebooted: play the firmware and boot again.
                match firmware::ending(&self.this_boot_log()) {
                    firmware::Ending::Tryboot => {
                        self.tryboot = true;
                        return self.boot();
                    }
                    firmware::Ending::Reboot => {
                        self.tryboot = false;
                        return self.boot();
                    }
                    firmware::Ending::Off => {}
                }
            }
            return Err(VmError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                serial: self.serial.clone(),
                last: self.serial_tail(),
            });
        }
        Ok(())
    }

    /// Waits until the serial console shows `needle`.
    pub fn wait_for_serial(&mut self, needle: &str, timeout: Duration) -> Result<(), VmError> {
        self.wait_for_serial_count(needle, 1, timeout)
    }

    /// Waits until the serial console shows `needle` `count` times in all
    /// (count boots, say).
    pub fn wait_for_serial_count(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        loop {
            if self.serial_log().matches(needle).count() >= count {
                return Ok(());
            }
            if let Err(e) = self.check_alive() {
                // The guest may have printed it and powered off at once.
                if self.serial_log().matches(needle).count() >= count {
                    return Ok(());
                }
                return Err(e);
            }
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    name: self.name.clone(),
                    what: format!("{needle:?} on the console"),
                    timeout,
                    serial: self.serial.clone(),
                    last: self.serial_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until apid answers through the port forward (in maintenance
    /// mode, or refusing an anonymous client once configured).
    pub fn wait_for_api(&mut self, timeout: Duration) -> Result<(), VmError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("start runtime for", &self.dir))?;
        let start = Instant::now();
        let addr = self.api_addr();
        loop {
            let answered = rt.block_on(async {
                use osctl::connect::{Credentials, LocalChecks, connect, diagnose};
                let Ok(mut c) = connect(&addr, &Credentials::Insecure, LocalChecks::On).await else { return false };
                match c.version(machinery::api::VersionRequest {}).await {
                    Ok(_) => true,
                    Err(_) => diagnose(&addr, &Credentials::Insecure, LocalChecks::On)
                        .await
                        .is_some_and(|why| why.contains("client certificate")),
                }
            });
            if answered {
                return Ok(());
            }
            self.check_alive()?;
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    name: self.name.clone(),
                    what: "the API to answer".into(),
                    timeout,
                    serial: self.serial.clone(),
                    last: self.serial_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Pulls the plug: SIGKILL, no shutdown (the Pi's one-shot tryboot
    /// flag does not survive it either).
    pub fn kill(&mut self) {
        self.tryboot = false;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops QEMU cleanly (SIGTERM: it flushes the overlay and exits; the
    /// guest gets no shutdown), or kills it after `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(c) = self.child.as_mut() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < timeout {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        while self.child.is_some() {
            // A reboot on a Pi-layout VM starts QEMU again; only a power
            // off ends it.
            if self.check_alive().is_err() || self.child.is_none() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    name: self.name.clone(),
                    what: "power-off".into(),
                    timeout,
                    serial: self.serial.clone(),
                    last: self.serial_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Leaves QEMU running after this value is dropped; returns its record.
    pub fn detach(mut self) -> Record {
        let pid = self.child.take().map_or(0, |c| c.id());
        Record {
            name: self.name.clone(),
            pid,
            api: self.api_addr(),
            ports: vec![(DEFAULT_API_PORT, self.api_port), (KUBE_API_PORT, self.kube_port)],
            serial: self.serial.clone(),
            dir: self.dir.clone(),
            image: self.opts.image.clone(),
            cluster_net: self.cluster_net.map(|n| n.to_string()),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serialises the VMs of one process (tests run in parallel threads): two
/// TCG guests with two vCPUs each on a two-core machine starve each other
/// into RCU stalls and boots of minutes. Hold the guard while a VM runs.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where `qemu up` keeps its VMs.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".plinth/vms"), |h| PathBuf::from(h).join(".plinth/vms"))
}

pub fn save_record(dir: &Path, r: &Record) -> Result<(), VmError> {
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_string_pretty(r).unwrap_or_default()).map_err(io("write", &path))
}

pub fn load_record(state_dir: &Path, name: &str) -> Result<Record, VmError> {
    let path = state_dir.join(name).join("vm.json");
    let text = std::fs::read_to_string(&path).map_err(|_| VmError::Unknown(name.to_string()))?;
    serde_json::from_str(&text).map_err(|e| VmError::Io { op: "parse", path, source: std::io::Error::other(e) })
}

/// The recorded VMs in `state_dir`.
pub fn list(state_dir: &Path) -> Vec<Record> {
    let mut v: Vec<Record> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| load_record(state_dir, &e.file_name().to_string_lossy()).ok())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Whether `pid` is still a QEMU process (and not a recycled pid).
fn is_qemu(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
}

/// Stops a recorded VM (SIGTERM to QEMU, SIGKILL after 10 s) and deletes
/// its directory (overlay, firmware variables, serial log).
pub fn down(state_dir: &Path, name: &str) -> Result<(), VmError> {
    use nix::sys::signal::{Signal, kill};
    let r = load_record(state_dir, name)?;
    if r.pid != 0 && is_qemu(r.pid) {
        let pid = nix::unistd::Pid::from_raw(r.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while is_qemu(r.pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_qemu(r.pid) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let dir = state_dir.join(name);
    std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))
}

/// The last `n` lines of a log.
pub fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_and_attach() {
        assert_eq!("nvme".parse::<Disk>(), Ok(Disk::Nvme));
        assert_eq!("sata".parse::<Disk>(), Ok(Disk::Ahci));
        assert!("floppy".parse::<Disk>().unwrap_err().contains("virtio, nvme, ahci or usb"));
        let f = Path::new("/vm/disk.qcow2");
        assert_eq!(Disk::Virtio.args(f, None), ["-drive", "file=/vm/disk.qcow2,format=qcow2,if=virtio"]);
        let usb = Disk::Usb.args(f, None).join(" ");
        assert!(usb.contains("if=none,id=d0") && usb.contains("usb-storage,drive=d0"), "{usb}");
    }

    #[test]
    fn a_throttled_disk_carries_qemus_limits_on_its_drive() {
        let f = Path::new("/vm/disk.qcow2");
        assert_eq!(
            Disk::Virtio.args(f, Some(Throttle::SD_CARD)),
            [
                "-drive",
                "file=/vm/disk.qcow2,format=qcow2,if=virtio,throttling.iops-total=200,throttling.bps-total=4194304"
            ]
        );
        let nvme = Disk::Nvme.args(f, Some(Throttle { iops: 50, bps: 1000 })).join(" ");
        assert!(nvme.contains("if=none,throttling.iops-total=50,throttling.bps-total=1000,id=d0"), "{nvme}");
        assert_eq!("300, 5000000".parse::<Throttle>(), Ok(Throttle { iops: 300, bps: 5_000_000 }));
        for bad in ["300", "0,5000", "a,b", "300,"] {
            assert!(bad.parse::<Throttle>().unwrap_err().contains("IOPS,BYTES_PER_SECOND"), "{bad}");
        }
    }

    #[test]
    fn a_cluster_network_is_a_multicast_group_with_a_nic_per_vm() {
        let net: ClusterNet = "239.192.1.2:40000".parse().unwrap();
        assert!("10.0.0.1:40000".parse::<ClusterNet>().unwrap_err().contains("not a multicast address"));
        assert!("239.192.1.2".parse::<ClusterNet>().unwrap_err().contains("GROUP:PORT"));
        let a = net.args("cp").join(" ");
        assert_eq!(a.split(' ').next(), Some("-netdev"));
        assert!(a.contains("socket,id=n1,mcast=239.192.1.2:40000,localaddr=127.0.0.1"), "{a}");
        assert!(a.contains(&format!("virtio-net-pci,netdev=n1,mac={}", ClusterNet::mac("cp"))), "{a}");
        assert_ne!(ClusterNet::mac("cp"), ClusterNet::mac("w1"), "one MAC per guest");
        let fresh = ClusterNet::new().unwrap();
        assert!(fresh.group.ip().is_multicast() && fresh.group.port() != 0, "{fresh}");
    }

    #[test]
    fn cluster_guests_run_single_threaded_tcg_unless_told() {
        assert_eq!(accel(None, false), "tcg");
        assert_eq!(accel(None, true), "tcg,thread=single");
        assert_eq!(accel(Some("kvm".into()), true), "kvm");
    }

    #[test]
    fn records_round_trip_and_list() {
        let d = tempfile::tempdir().unwrap();
        let r = Record {
            name: "n1".into(),
            pid: 0,
            api: "127.0.0.1:1234".into(),
            ports: vec![(50000, 1234)],
            serial: d.path().join("n1/serial.log"),
            dir: d.path().join("n1"),
            image: "plinth.img".into(),
            cluster_net: None,
        };
        std::fs::create_dir_all(&r.dir).unwrap();
        save_record(&r.dir, &r).unwrap();
        assert_eq!(load_record(d.path(), "n1").unwrap().ports, [(50000, 1234)]);
        assert_eq!(list(d.path()).len(), 1);
        assert!(matches!(load_record(d.path(), "n2"), Err(VmError::Unknown(_))));
        down(d.path(), "n1").unwrap();
        assert!(list(d.path()).is_empty());
    }
}
