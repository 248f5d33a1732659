//! The system calls PID 1 makes while it boots, behind a small trait so the
//! boot sequence is unit-tested with a recording fake ([`Recorder`]) and
//! proved for real in QEMU.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct SysError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub type SysResult<T> = Result<T, SysError>;

fn sys_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SysError {
    let path = path.to_path_buf();
    move |source| SysError { op, path, source }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

pub trait System: Send + Sync {
    fn mount(&self, source: &str, target: &Path, fstype: &str, flags: MsFlags, data: &str) -> SysResult<()>;
    /// Moves a mount (`mount --move`).
    fn move_mount(&self, from: &Path, to: &Path) -> SysResult<()>;
    fn umount(&self, target: &Path) -> SysResult<()>;
    /// Makes `new_root` the root (`switch_root` without deleting anything).
    fn switch_root(&self, new_root: &Path) -> SysResult<()>;
    fn mkdir_all(&self, path: &Path) -> SysResult<()>;
    fn read_to_string(&self, path: &Path) -> SysResult<String>;
    /// Writes a kernel control file (`/sys`, `/proc/sys`) in one write.
    fn write(&self, path: &Path, data: &[u8]) -> SysResult<()>;
    fn read_dir(&self, path: &Path) -> SysResult<Vec<String>>;
    /// Bytes at `offset` of a file or block device.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> SysResult<Vec<u8>>;
    /// Loads a kernel module from a file; an already loaded one is fine.
    fn load_module(&self, path: &Path) -> SysResult<()>;
    /// Writes bytes at `offset` of a block device (or file), then syncs it.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> SysResult<()>;
    /// Runs a program to completion (mke2fs, e2fsck) and returns its exit
    /// code; fails when it cannot be started or is killed by a signal.
    fn run(&self, program: &Path, args: &[&str]) -> SysResult<i32>;
    fn sync(&self);
    /// Creates a read-only device-mapper device with one target
    /// (`dmsetup create --readonly`); returns its node.
    fn dm_create(&self, name: &str, sectors: u64, target: &str, params: &str) -> SysResult<PathBuf>;
}

/// The real thing.
#[derive(Debug, Default)]
pub struct Linux;

impl System for Linux {
    fn mount(&self, source: &str, target: &Path, fstype: &str, flags: MsFlags, data: &str) -> SysResult<()> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, (!data.is_empty()).then_some(data))
            .map_err(|e| sys_err("mount", target)(errno(e)))
    }

    fn move_mount(&self, from: &Path, to: &Path) -> SysResult<()> {
        nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| sys_err("move mount to", to)(errno(e)))
    }

    fn umount(&self, target: &Path) -> SysResult<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(|e| sys_err("unmount", target)(errno(e)))
    }

    fn switch_root(&self, new_root: &Path) -> SysResult<()> {
        let e = |op| move |err| sys_err(op, new_root)(errno(err));
        nix::unistd::chdir(new_root).map_err(e("chdir"))?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(e("move to /"))?;
        nix::unistd::chroot(".").map_err(e("chroot"))?;
        nix::unistd::chdir("/").map_err(e("chdir /"))
    }

    fn mkdir_all(&self, path: &Path) -> SysResult<()> {
        std::fs::create_dir_all(path).map_err(sys_err("create directory", path))
    }

    fn read_to_string(&self, path: &Path) -> SysResult<String> {
        std::fs::read_to_string(path).map_err(sys_err("read", path))
    }

    fn write(&self, path: &Path, data: &[u8]) -> SysResult<()> {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .map_err(sys_err("write", path))
    }

    fn read_dir(&self, path: &Path) -> SysResult<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .map_err(sys_err("list", path))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> SysResult<Vec<u8>> {
        let mut f = File::open(path).map_err(sys_err("open", path))?;
        f.seek(SeekFrom::Start(offset)).map_err(sys_err("seek", path))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).map_err(sys_err("read", path))?;
        Ok(buf)
    }

    fn load_module(&self, path: &Path) -> SysResult<()> {
        use nix::kmod::{ModuleInitFlags, finit_module};
        let file = File::open(path).map_err(sys_err("open module", path))?;
        let compressed = path.extension().is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
        // MODULE_INIT_COMPRESSED_FILE (Linux 5.17+): the kernel decompresses.
        let flags = if compressed { ModuleInitFlags::from_bits_retain(4) } else { ModuleInitFlags::empty() };
        let params = CString::default();
        match finit_module(&file, &params, flags) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(sys_err("load module", path)(errno(e))),
        }
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> SysResult<()> {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(sys_err("open for writing", path))?;
        f.write_all_at(data, offset).and_then(|_| f.sync_all()).map_err(sys_err("write", path))
    }

    fn run(&self, program: &Path, args: &[&str]) -> SysResult<i32> {
        let out = std::process::Command::new(program).args(args).output().map_err(sys_err("run", program))?;
        for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
            tracing::info!("{}: {line}", program.display());
        }
        out.status.code().ok_or_else(|| sys_err("run", program)(std::io::Error::other(out.status.to_string())))
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn dm_create(&self, name: &str, sectors: u64, target: &str, params: &str) -> SysResult<PathBuf> {
        crate::dm::create(name, sectors, target, params).map_err(|(op, source)| SysError {
            op,
            path: Path::new("/dev/mapper").join(name),
            source,
        })
    }
}

/// A fake for unit tests: records every call, serves scripted files.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: std::sync::Mutex<Vec<String>>,
    pub files: std::sync::Mutex<std::collections::BTreeMap<PathBuf, Vec<u8>>>,
    /// Paths whose operations fail.
    pub failing: std::sync::Mutex<Vec<PathBuf>>,
    /// Scripted results by call (as recorded): each call takes the next;
    /// 0 is success, another value a failure (a program's exit code).
    pub outcomes: std::sync::Mutex<std::collections::BTreeMap<String, std::collections::VecDeque<i32>>>,
}

#[cfg(test)]
impl Recorder {
    pub fn file(&self, path: &str, content: impl Into<Vec<u8>>) {
        self.files.lock().unwrap().insert(PathBuf::from(path), content.into());
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Scripts the results of the next calls recorded as `call`.
    pub fn outcome(&self, call: &str, results: &[i32]) {
        self.outcomes.lock().unwrap().entry(call.to_string()).or_default().extend(results);
    }

    fn scripted(&self, call: &str) -> i32 {
        self.outcomes.lock().unwrap().get_mut(call).and_then(|q| q.pop_front()).unwrap_or(0)
    }

    fn record(&self, call: String, path: &Path) -> SysResult<()> {
        let code = self.scripted(&call);
        self.calls.lock().unwrap().push(call);
        if code != 0 || self.failing.lock().unwrap().iter().any(|p| p == path) {
            return Err(sys_err("fake", path)(std::io::Error::other("injected failure")));
        }
        Ok(())
    }

    fn get(&self, path: &Path) -> SysResult<Vec<u8>> {
        self.files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| sys_err("read", path)(std::io::Error::from(std::io::ErrorKind::NotFound)))
    }
}

#[cfg(test)]
impl System for Recorder {
    fn mount(&self, source: &str, target: &Path, fstype: &str, flags: MsFlags, data: &str) -> SysResult<()> {
        let ro = if flags.contains(MsFlags::MS_RDONLY) { " ro" } else { "" };
        let data = if data.is_empty() { String::new() } else { format!(" {data}") };
        self.record(format!("mount {source} {} {fstype}{ro}{data}", target.display()), target)
    }
    fn move_mount(&self, from: &Path, to: &Path) -> SysResult<()> {
        self.record(format!("move {} {}", from.display(), to.display()), to)
    }
    fn umount(&self, target: &Path) -> SysResult<()> {
        self.record(format!("umount {}", target.display()), target)
    }
    fn switch_root(&self, new_root: &Path) -> SysResult<()> {
        self.record(format!("switch_root {}", new_root.display()), new_root)
    }
    fn mkdir_all(&self, path: &Path) -> SysResult<()> {
        self.record(format!("mkdir {}", path.display()), path)
    }
    fn read_to_string(&self, path: &Path) -> SysResult<String> {
        Ok(String::from_utf8_lossy(&self.get(path)?).into_owned())
    }
    fn write(&self, path: &Path, data: &[u8]) -> SysResult<()> {
        self.record(format!("write {} {}", path.display(), String::from_utf8_lossy(data)), path)
    }
    fn read_dir(&self, path: &Path) -> SysResult<Vec<String>> {
        let files = self.files.lock().unwrap();
        let mut names: Vec<String> = files
            .keys()
            .filter_map(|p| {
                p.strip_prefix(path).ok()?.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned())
            })
            .collect();
        names.dedup();
        Ok(names)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> SysResult<Vec<u8>> {
        let data = self.get(path)?;
        let start = (offset as usize).min(data.len());
        let mut out = data[start..].to_vec();
        out.resize(len, 0);
        Ok(out)
    }
    fn load_module(&self, path: &Path) -> SysResult<()> {
        self.record(format!("load {}", path.display()), path)
    }
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> SysResult<()> {
        self.record(format!("write_at {} {offset} {} bytes", path.display(), data.len()), path)?;
        let mut files = self.files.lock().unwrap();
        let file = files.entry(path.to_path_buf()).or_default();
        let end = offset as usize + data.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn run(&self, program: &Path, args: &[&str]) -> SysResult<i32> {
        let call = format!("run {} {}", program.display(), args.join(" "));
        let code = self.scripted(&call);
        self.calls.lock().unwrap().push(call);
        if self.failing.lock().unwrap().iter().any(|p| p == program) {
            return Err(sys_err("fake", program)(std::io::Error::other("injected failure")));
        }
        Ok(code)
    }
    fn sync(&self) {
        self.calls.lock().unwrap().push("sync".into());
    }
    fn dm_create(&self, name: &str, sectors: u64, target: &str, params: &str) -> SysResult<PathBuf> {
        let node = PathBuf::from("/dev/dm-0");
        self.record(format!("dm_create {name} {sectors} {target} {params}"), &node)?;
        Ok(node)
    }
}
