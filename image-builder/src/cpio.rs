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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_cpio_tool_layout() {
        let a = archive(&[
            Entry::Dir { path: "dev".into() },
            Entry::CharDev { path: "dev/console".into(), major: 5, minor: 1 },
            Entry::File { path: "init".into(), mode: 0o755, data: b"hello".to_vec() },
        ]);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // Parse it back: walk the headers.
        let mut i = 0;
        let mut names = Vec::new();
        while i < a.len() {
            let h = std::str::from_utf8(&a[i..i + 110]).unwrap();
            let field = |n: usize| u32::from_str_radix(&h[6 + n * 8..14 + n * 8], 16).unwrap() as usize;
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&a[i + 110..i + 110 + namesize - 1]).unwrap().to_string();
            let data_start = (i + 110 + namesize).div_ceil(4) * 4;
            if name == "init" {
                assert_eq!(&a[data_start..data_start + size], b"hello");
                assert_eq!(mode as u32, S_IFREG | 0o755);
            }
            if name == "dev/console" {
                assert_eq!((field(9), field(10)), (5, 1));
            }
            names.push(name);
            i = (data_start + size).div_ceil(4) * 4;
        }
        assert_eq!(names, ["dev", "dev/console", "init", "TRAILER!!!"]);
    }
}
