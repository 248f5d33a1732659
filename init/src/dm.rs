//! The device mapper's ioctls (`linux/dm-ioctl.h`, interface 4), enough to
//! create one read-only device with one target: `DM_DEV_CREATE`,
//! `DM_TABLE_LOAD`, then `DM_DEV_SUSPEND` without the suspend flag, which
//! resumes it — what `dmsetup create --readonly` does. The `devicemapper`
//! crate does the same through bindgen (libclang at build time) for three
//! calls, so they are written here: a `struct dm_ioctl` is 312 bytes of
//! fixed fields followed by the target spec and its parameter string.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// `/dev/mapper/control`, created by devtmpfs when dm-mod loads.
pub const CONTROL: &str = "/dev/mapper/control";

const HEADER: usize = 312;
const SPEC: usize = 40;
const NAME_LEN: usize = 128;
const TYPE_LEN: usize = 16;
const READONLY: u32 = 1;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn iowr(nr: u64) -> u64 {
    (3 << 30) | ((HEADER as u64) << 16) | (0xfd << 8) | nr
}
const DEV_CREATE: u64 = iowr(3);
const DEV_SUSPEND: u64 = iowr(6);
const TABLE_LOAD: u64 = iowr(9);

/// The request: header (version 4.0.0, sizes, flags, name), then for a
/// table one target spec and its NUL-terminated parameters, padded to 8.
fn request(name: &str, flags: u32, target: Option<(u64, &str, &str)>) -> Vec<u8> {
    let mut b = vec![0u8; HEADER];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    if let Some((sectors, kind, params)) = target {
        let mut spec = vec![0u8; SPEC];
        spec[8..16].copy_from_slice(&sectors.to_ne_bytes());
        let k = kind.as_bytes();
        spec[24..24 + k.len().min(TYPE_LEN - 1)].copy_from_slice(&k[..k.len().min(TYPE_LEN - 1)]);
        spec.extend_from_slice(params.as_bytes());
        spec.push(0);
        spec.resize(spec.len().div_ceil(8) * 8, 0);
        b.extend_from_slice(&spec);
        b[20..24].copy_from_slice(&1u32.to_ne_bytes()); // target_count
    }
    let size = b.len() as u32;
    b[12..16].copy_from_slice(&size.to_ne_bytes()); // data_size
    b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes()); // data_start
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.as_bytes();
    b[48..48 + n.len().min(NAME_LEN - 1)].copy_from_slice(&n[..n.len().min(NAME_LEN - 1)]);
    b
}

fn call(
    control: &std::fs::File,
    what: &'static str,
    req: u64,
    buf: &mut [u8],
) -> Result<(), (&'static str, std::io::Error)> {
    // SAFETY: `buf` is a `struct dm_ioctl` of `data_size` bytes (its own
    // length) that lives across the call; the kernel reads and writes
    // within data_size only.
    let r = unsafe { nix::libc::ioctl(control.as_raw_fd(), req as _, buf.as_mut_ptr()) };
    if r < 0 { Err((what, std::io::Error::last_os_error())) } else { Ok(()) }
}

/// Creates the read-only device `name` of `sectors` with one `kind` target
/// and its `params`, and resumes it; returns its node (`/dev/dm-N`).
pub fn create(name: &str, sectors: u64, kind: &str, params: &str) -> Result<PathBuf, (&'static str, std::io::Error)> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| ("open the device-mapper control node", e))?;
    let mut create = request(name, 0, None);
    call(&control, "create the device-mapper device", DEV_CREATE, &mut create)?;
    let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap_or_default());
    let mut load = request(name, READONLY, Some((sectors, kind, params)));
    call(&control, "load the device-mapper table", TABLE_LOAD, &mut load)?;
    let mut resume = request(name, 0, None);
    call(&control, "resume the device-mapper device", DEV_SUSPEND, &mut resume)?;
    let minor = nix::sys::stat::minor(dev);
    let node = Path::new("/dev").join(format!("dm-{minor}"));
    // devtmpfs adds the node as the disk appears; give it a moment.
    for _ in 0..100 {
        if node.exists() {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(("find the device node of", std::io::Error::from(std::io::ErrorKind::NotFound)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_dm_ioctl_h_says() {
        assert_eq!(DEV_CREATE, 0xc138_fd03);
        assert_eq!(DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(TABLE_LOAD, 0xc138_fd09);
        let r = request("plinth-root", 0, None);
        assert_eq!(r.len(), HEADER);
        assert_eq!(&r[0..4], &4u32.to_ne_bytes());
        assert_eq!(&r[12..16], &(HEADER as u32).to_ne_bytes());
        assert_eq!(&r[48..59], b"plinth-root");
        let t = request("x", READONLY, Some((96, "verity", "1 a b")));
        assert_eq!(t.len(), HEADER + 48, "spec + params + NUL, padded to 8");
        assert_eq!(&t[12..16], &(t.len() as u32).to_ne_bytes());
        assert_eq!(&t[20..24], &1u32.to_ne_bytes());
        assert_eq!(&t[28..32], &READONLY.to_ne_bytes());
        assert_eq!(&t[HEADER + 8..HEADER + 16], &96u64.to_ne_bytes());
        assert_eq!(&t[HEADER + 24..HEADER + 30], b"verity");
        assert_eq!(&t[HEADER + SPEC..HEADER + SPEC + 6], b"1 a b\0");
    }
}
