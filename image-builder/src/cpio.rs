//! A newc ("070701") cpio writer: the initramfs format the kernel unpacks.
//! Hand-written: the format is a 110-byte ASCII header per entry, and
//! writing it here lets the archive hold device nodes without root.

/// One archive entry.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A character device node (e.g. /dev/console: 5, 1).
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [ino, mode, 0, 0, 1, 0, size as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Writes the archive, ending with the `TRAILER!!!` entry.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir { path } => header(&mut out, ino, S_IFDIR | 0o755, 0, (0, 0), path),
            Entry::CharDev { path, major, minor } => header(&mut out, ino, S_IFCHR | 0o600, 0, (*major, *minor), path),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, S_IFREG | mode, data.len(), (0, 0), path);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

/// One entry read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub path: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Reads a newc archive (up to `TRAILER!!!`); `None` if it is malformed.
pub fn read(a: &[u8]) -> Option<Vec<Read>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let h = std::str::from_utf8(a.get(i..i + 110)?).ok()?;
        if !h.starts_with("070701") {
            return None;
        }
        let field = |n: usize| u32::from_str_radix(&h[6 + n * 8..14 + n * 8], 16).ok();
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name = std::str::from_utf8(a.get(i + 110..i + 110 + namesize.checked_sub(1)?)?).ok()?.to_string();
        let data_start = (i + 110 + namesize).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            return Some(out);
        }
        let data = a.get(data_start..data_start + size)?.to_vec();
        out.push(Read { path: name, mode, rdev: (field(9)?, field(10)?), data });
        i = (data_start + size).div_ceil(4) * 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote() {
        let a = archive(&[
            Entry::Dir { path: "dev".into() },
            Entry::CharDev { path: "dev/console".into(), major: 5, minor: 1 },
            Entry::File { path: "init".into(), mode: 0o755, data: b"hello".to_vec() },
            Entry::File { path: "odd".into(), mode: 0o644, data: b"123".to_vec() },
        ]);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let r = read(&a).unwrap();
        let names: Vec<&str> = r.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "odd"]);
        assert_eq!(r[0].mode, S_IFDIR | 0o755);
        assert_eq!((r[1].mode, r[1].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!((r[2].mode, r[2].data.as_slice()), (S_IFREG | 0o755, &b"hello"[..]));
        assert_eq!(r[3].data, b"123");
        assert!(read(&a[..a.len() - 20]).is_none(), "a truncated archive is refused");
        assert!(read(b"garbage").is_none());
    }

    #[test]
    fn the_kernel_can_unpack_it() {
        // GNU cpio, when present, agrees on the format.
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else { return };
        if !out.status.success() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let a = archive(&[
            Entry::Dir { path: "lib".into() },
            Entry::File { path: "lib/order".into(), mode: 0o644, data: b"virtio.ko\n".to_vec() },
        ]);
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(d.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &a).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(d.path().join("lib/order")).unwrap(), b"virtio.ko\n");
    }
}
