//! init as the real PID 1: early mounts, modules, the slot's root, STATE and
//! EPHEMERAL, the network, then the same service core as host mode. PID 1
//! never exits and never panics on bad input: a boot that cannot go on is
//! logged to the console and ends in a reboot, which lets the boot loader
//! fall back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use machinery::slots::rpi;
use machinery::{boot_steps, layout};

use crate::boot::{self, Mounted};
use crate::machine::{KubeletSettings, NodeSettings, OrchestratorSettings, PowerAction, Storage};
use crate::steps::StepLog;
use crate::system::{Linux, System};
use crate::{Bring, Core};

/// How long PID 1 waits for a disk partition to appear.
const PARTITION_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes each log record to the kernel log (and so to the console),
/// opening `/dev/kmsg` per record: PID 1 logs little, and no descriptor or
/// lock is shared between the threads that log.
struct Kmsg;

impl std::io::Write for Kmsg {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        // One record per write; "<6>" is the info level. The newline ends
        // the record: without it the kernel holds it open for continuation
        // and readers (and the console) see it only when the next one comes.
        let record = format!("<6>plinth: {}\n", text.trim_end());
        let written =
            std::fs::OpenOptions::new().write(true).open("/dev/kmsg").and_then(|mut f| f.write_all(record.as_bytes()));
        if let Err(e) = written {
            let _ = writeln!(std::io::stderr(), "plinth (kmsg: {e}): {}", text.trim_end());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn setup_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(|| Kmsg)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Mounts the root image of this boot's slot and switches into it; returns
/// the slot and its root partition's device.
fn enter_root(sys: &dyn System, steps: &StepLog) -> Result<(layout::Slot, PathBuf), boot::BootError> {
    for failure in boot::load_modules(sys, Path::new(layout::INITRAMFS_MODULES))? {
        tracing::warn!("{failure}");
    }
    steps.record(boot_steps::MODULES);
    let slot = boot::slot(sys)?;
    let dev = boot::mount_root(sys, slot, PARTITION_TIMEOUT)?;
    tracing::info!("slot {}: root image {}", slot.name(), dev.display());
    boot::switch_into_root(sys)?;
    steps.record(boot_steps::ROOT);
    for failure in boot::runtime_mounts(sys) {
        tracing::warn!("for containers: {failure}");
    }
    Ok((slot, dev))
}

/// Mounts STATE and EPHEMERAL (formatting only a blank or freshly
/// installed partition, repairing an ext4 that does not mount). A STATE
/// that still cannot be mounted is left as it is: a tmpfs holds this
/// boot's socket and the node comes up in safe mode with the trust kept on
/// EPHEMERAL. EPHEMERAL holds nothing trust depends on: a tmpfs replaces it.
fn mount_data(sys: &dyn System) -> Storage {
    let mut storage = Storage { trust_copy: Some(PathBuf::from(layout::TRUST_COPY)), ..Storage::default() };
    for (label, target) in [(layout::STATE, layout::MOUNT_STATE), (layout::EPHEMERAL, layout::MOUNT_EPHEMERAL)] {
        match boot::mount_data_partition(sys, label, Path::new(target), PARTITION_TIMEOUT) {
            Ok(Mounted::New) => tracing::info!("{label}: created a filesystem (first boot), mounted at {target}"),
            Ok(Mounted::Existing) => tracing::info!("{label}: mounted at {target}"),
            Ok(Mounted::Repaired(steps)) => storage.notes.push(format!("{label}: repaired: {}", steps.join("; "))),
            Err(e) => {
                storage.notes.push(if label == layout::STATE {
                    storage.state_lost = Some(e.to_string());
                    format!("{e}; safe mode with the last known trust (the tmpfs at {target} keeps nothing)")
                } else {
                    format!("{e}; using a tmpfs at {target}: nothing there survives a reboot")
                });
                let _ = sys.mkdir_all(Path::new(target));
                let _ = sys.mount("tmpfs", Path::new(target), "tmpfs", nix::mount::MsFlags::MS_NOSUID, "mode=0755");
            }
        }
    }
    storage
}

/// Stops at nothing: unmounts what it can and reboots or powers off.
fn finish(sys: &dyn System, action: PowerAction) -> ! {
    for e in boot::unmount_data(sys) {
        tracing::warn!("{e}");
    }
    sys.sync();
    // `osctl reset`: EPHEMERAL, unmounted now, is formatted at the next boot.
    if Path::new(crate::reset::RESET_REQUESTED).exists() {
        match boot::find_partition(sys, layout::EPHEMERAL) {
            Some(dev) => match crate::reset::wipe_partition(sys, &dev, layout::EPHEMERAL) {
                Ok(()) => tracing::warn!("reset: {} ({}) wiped", dev.display(), layout::EPHEMERAL),
                Err(e) => tracing::error!("reset: wiping {}: {e}", dev.display()),
            },
            None => tracing::error!("reset: no {} partition to wipe", layout::EPHEMERAL),
        }
    }
    let mode = match action {
        PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        PowerAction::Tryboot => {
            if let Err(e) = reboot_tryboot() {
                tracing::error!("reboot(2) with {:?} failed: {e}; a plain reboot falls back", rpi::TRYBOOT_REBOOT_ARG);
            }
            nix::sys::reboot::RebootMode::RB_AUTOBOOT
        }
    };
    loop {
        let Err(e) = nix::sys::reboot::reboot(mode);
        tracing::error!("reboot(2) failed: {e}; retrying");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// `reboot(2)` with `LINUX_REBOOT_CMD_RESTART2` and
/// [`rpi::TRYBOOT_REBOOT_ARG`]: the Raspberry Pi firmware's one-shot
/// tryboot (nix has no RESTART2). Returns only on failure.
#[allow(unsafe_code)]
fn reboot_tryboot() -> nix::Result<()> {
    use nix::libc;
    let arg = std::ffi::CString::new(rpi::TRYBOOT_REBOOT_ARG).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: the reboot syscall with its two magic numbers, a command and
    // a pointer to a NUL-terminated string that outlives the call; the
    // kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_RESTART2,
            arg.as_ptr(),
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Makes sure fds 0–2 are open (on the console, else /dev/null): when the
/// initramfs has no /dev/console the kernel starts PID 1 without them, and
/// the next files opened would take their numbers.
fn ensure_stdio() {
    use std::os::fd::IntoRawFd as _;
    for fd in 0..3 {
        if Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            continue;
        }
        let console = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console");
        match console.or_else(|_| std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")) {
            // The lowest free number is taken: this one. Kept open for good.
            Ok(f) => {
                let _ = f.into_raw_fd();
            }
            Err(_) => return,
        }
    }
}

/// PID 1's whole life.
pub fn run() -> ! {
    // The kernel's part of the boot ends here.
    let started = crate::steps::since_boot();
    let sys = Linux;
    if let Err(e) = boot::early_mounts(&sys) {
        let _ = writeln!(std::io::stderr(), "plinth-init: early mounts: {e}");
    }
    ensure_stdio();
    setup_logging();
    std::panic::set_hook(Box::new(|info| tracing::error!("PID 1 caught a panic: {info}")));
    tracing::info!("Plinth {} starting", machinery::VERSION);
    // On /run, which the switch into the root carries along.
    let steps = StepLog::new(layout::BOOT_STEPS);
    steps.record_at(boot_steps::PID1, started);
    let (slot, root_dev) = match enter_root(&sys, &steps) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot boot: {e}; rebooting in 10 s so the boot loader can fall back");
            std::thread::sleep(Duration::from_secs(10));
            finish(&sys, PowerAction::Reboot);
        }
    };
    let mut watchdog = Watchdog::open();
    let storage = mount_data(&sys);
    let state_dir = PathBuf::from(layout::MOUNT_STATE);
    steps.record(boot_steps::DATA);
    watchdog.pet();
    let (board, version, security_version) = crate::upgrade::running_image();
    tracing::info!("Plinth {version} for {board}, slot {}", slot.name());
    let slots = crate::upgrade::disk_of(&root_dev).map(|disk| crate::upgrade::SlotSettings {
        loader: crate::disk::Disk::open(&disk).map_or(crate::loader::Loader::SdBoot, |d| {
            crate::loader::Loader::detect(&d, &state_dir.join(crate::upgrade::TRIAL_RECORD))
        }),
        disk,
        booted: slot,
        board,
        version,
        security_version,
        record: state_dir.join("slots.json"),
        floor: state_dir.join(crate::upgrade::SECURITY_FLOOR),
        stage_dir: PathBuf::from(layout::MOUNT_EPHEMERAL).join("lib/plinth/upgrade"),
        health_timeout: crate::upgrade::HEALTH_TIMEOUT,
    });
    let core = Core {
        log_dir: PathBuf::from(layout::MOUNT_EPHEMERAL).join("log"),
        state_dir,
        trusted_key: PathBuf::from(layout::ROOT_TRUSTED_KEY),
        apid: PathBuf::from(layout::ROOT_APID),
        settings: NodeSettings {
            slots,
            orchestrator: Path::new(layout::ROOT_ORCHESTRATOR).exists().then(|| OrchestratorSettings {
                program: PathBuf::from(layout::ROOT_ORCHESTRATOR),
                data_dir: PathBuf::from(layout::ORCHESTRATOR_DATA),
                listen: format!("0.0.0.0:{}", layout::KUBE_API_PORT),
                kubelet: Path::new(layout::ROOT_CONTAINERD).exists().then(|| KubeletSettings {
                    containerd: PathBuf::from(layout::ROOT_CONTAINERD),
                    containerd_config: PathBuf::from(layout::ROOT_CONTAINERD_CONFIG),
                    cri_socket: PathBuf::from(layout::CONTAINERD_SOCKET),
                    cni_conf_dir: PathBuf::from(layout::CNI_CONF_DIR),
                    image_dir: PathBuf::from(layout::ROOT_IMAGES),
                }),
                etcd: Path::new(layout::ROOT_ETCD).exists().then(|| crate::machine::etcd::EtcdSettings {
                    program: PathBuf::from(layout::ROOT_ETCD),
                    dir: PathBuf::from(layout::ETCD_DIR),
                    cert_lifetime: None,
                }),
            }),
            clock_floor: Some(PathBuf::from(layout::ROOT_BUILD_TIME)),
            storage,
            boot_steps: Some(steps),
            reset_marker: Some(PathBuf::from(crate::reset::RESET_REQUESTED)),
            ..NodeSettings::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}; rebooting");
            finish(&sys, PowerAction::Reboot);
        }
    };
    runtime.spawn(watchdog.keep_petting());
    let action = loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(crate::serve(core.clone(), Bring::Network))
        })) {
            Ok(Ok((action, _))) => break action,
            Ok(Err(e)) => {
                tracing::error!("init cannot serve: {e}; rebooting in 10 s");
                std::thread::sleep(Duration::from_secs(10));
                break PowerAction::Reboot;
            }
            Err(_) => tracing::error!("init's service loop panicked; starting it again"),
        }
    };
    drop(runtime);
    finish(&sys, action)
}

/// How often init pets the watchdog; its timeout (softdog: 60 s, i6300esb:
/// 30 s) resets the machine if init stops doing so.
const WATCHDOG_PET: Duration = Duration::from_secs(5);

/// The watchdog device, opened (and so armed) as soon as the root is
/// mounted: from then on a boot that stops making progress for the
/// driver's timeout resets the machine (a trial boot then falls back).
struct Watchdog(Option<std::fs::File>);

impl Watchdog {
    fn open() -> Watchdog {
        match std::fs::OpenOptions::new().write(true).open("/dev/watchdog") {
            Ok(f) => {
                tracing::info!("watchdog armed: init pets it every {WATCHDOG_PET:?}");
                Watchdog(Some(f))
            }
            Err(e) => {
                tracing::warn!("no watchdog (/dev/watchdog: {e}): a hung boot is not reset");
                Watchdog(None)
            }
        }
    }

    fn pet(&mut self) {
        if let Some(dev) = &mut self.0
            && let Err(e) = dev.write_all(b"p")
        {
            tracing::warn!("petting the watchdog: {e}");
        }
    }

    /// Pets from the async runtime, so a stuck runtime stops petting.
    async fn keep_petting(mut self) {
        loop {
            self.pet();
            tokio::time::sleep(WATCHDOG_PET).await;
        }
    }
}

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}
