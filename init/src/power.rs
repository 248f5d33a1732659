//! What "reboot" and "power off" mean for this init.

/// The last step of a reboot or shutdown, after services are stopped.
pub trait Power: Send + Sync {
    fn reboot(&self) -> !;
    fn power_off(&self) -> !;
}

/// Host mode: a reboot re-executes init with its arguments (a fresh start
/// over the same state directory, like a real boot); power off exits.
#[derive(Debug, Default)]
pub struct HostPower;

impl Power for HostPower {
    fn reboot(&self) -> ! {
        use std::os::unix::process::CommandExt as _;
        let args: Vec<String> = std::env::args().collect();
        let err = std::process::Command::new("/proc/self/exe").arg0(&args[0]).args(&args[1..]).exec();
        tracing::error!("re-executing init failed: {err}; exiting instead");
        std::process::exit(1)
    }

    fn power_off(&self) -> ! {
        std::process::exit(0)
    }
}
