//! `plinth-pause`: the first process of every pod sandbox (the image
//! `machinery::layout::PAUSE_IMAGE`, written by image-builder). It holds the
//! pod's namespaces open, reaps the orphans re-parented to it when the pod
//! shares one PID namespace, and exits at once on SIGTERM or SIGINT.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    // Blocked, then taken one at a time: no handler runs asynchronously.
    if set.thread_block().is_err() {
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if s == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => std::process::exit(0),
            Err(_) => {}
        }
    }
}
