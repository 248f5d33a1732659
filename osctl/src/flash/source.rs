//! The image to flash: raw, or compressed with zstd or xz (told apart by
//! their magic bytes, not by the file name), its size once decompressed
//! (known before anything is written), and its manifest when image-builder's
//! `<image>.manifest.json` is beside it.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::FlashError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Zstd,
    Xz,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Zstd => "zstd",
            Format::Xz => "xz",
        }
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];

/// The parts of image-builder's manifest that flashing checks.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Manifest {
    pub board: String,
    #[serde(default)]
    pub parts: Vec<PartSum>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PartSum {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// The size and sha256 of the whole (uncompressed) image.
    pub fn image(&self) -> Option<&PartSum> {
        self.parts.iter().find(|p| p.name == "image")
    }
}

#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    pub format: Format,
    /// Bytes once decompressed: what lands on the device.
    pub size: u64,
    pub manifest: Option<(PathBuf, Manifest)>,
}

/// Where image-builder puts an image's manifest: beside the raw image, so
/// `plinth.img.zst`'s is `plinth.img.manifest.json`.
pub fn manifest_path(image: &Path) -> PathBuf {
    let s = image.display().to_string();
    let raw = s.strip_suffix(".zst").or_else(|| s.strip_suffix(".xz")).unwrap_or(&s);
    PathBuf::from(format!("{raw}.manifest.json"))
}

impl Image {
    /// Opens and measures an image; a truncated or damaged compressed file
    /// is refused here, before anything is written, wherever its framing
    /// shows it (the zstd frames and blocks, the xz index).
    pub fn open(path: &Path) -> Result<Image, FlashError> {
        let bad = |why: String| FlashError::BadImage { path: path.to_path_buf(), why };
        let io = |source| FlashError::Io { op: "read", path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; 6];
        let got = read_up_to(&mut file, &mut head).map_err(io)?;
        let format = if head[..got].starts_with(&ZSTD_MAGIC) {
            Format::Zstd
        } else if head[..got] == XZ_MAGIC {
            Format::Xz
        } else {
            Format::Raw
        };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match (ext, format) {
            ("zst", f) if f != Format::Zstd => return Err(bad("its name ends in .zst but it is not zstd data".into())),
            ("xz", f) if f != Format::Xz => return Err(bad("its name ends in .xz but it is not xz data".into())),
            _ => {}
        }
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let declared = match format {
            Format::Raw => Some(len),
            Format::Zstd => zstd_content_size(BufReader::new(&mut file), len).map_err(bad)?,
            Format::Xz => Some(
                lzma_rust2::xz_uncompressed_size(&mut file)
                    .map_err(|e| bad(format!("truncated or damaged xz file: {e}")))?,
            ),
        };
        let manifest = read_manifest(&manifest_path(path))?;
        let size = match (declared, manifest.as_ref().and_then(|(_, m)| m.image())) {
            (Some(n), Some(m)) if n != m.size => {
                return Err(bad(format!(
                    "it holds a {n}-byte image, its manifest {} says {} bytes: they do not belong together, or the image is damaged",
                    manifest_path(path).display(),
                    m.size
                )));
            }
            (Some(n), _) => n,
            (None, Some(m)) => m.size,
            // A zstd stream that does not say how big it is: measure it.
            (None, None) => std::io::copy(&mut decoder(path, format)?, &mut std::io::sink())
                .map_err(|e| bad(format!("truncated or damaged zstd data: {e}")))?,
        };
        if size == 0 {
            return Err(bad("it is empty".into()));
        }
        Ok(Image { path: path.to_path_buf(), format, size, manifest })
    }

    /// The image's bytes, decompressed as they stream; corruption shows as
    /// a read error (both formats check their own checksums).
    pub fn reader(&self) -> Result<Box<dyn Read + Send>, FlashError> {
        decoder(&self.path, self.format)
    }
}

fn decoder(path: &Path, format: Format) -> Result<Box<dyn Read + Send>, FlashError> {
    let io = |source| FlashError::Io { op: "read", path: path.to_path_buf(), source };
    let file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    Ok(match format {
        Format::Raw => Box::new(file),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io)?),
        Format::Xz => Box::new(lzma_rust2::XzReader::new(file, true)),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_manifest(path: &Path) -> Result<Option<(PathBuf, Manifest)>, FlashError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FlashError::Io { op: "read", path: path.to_path_buf(), source }),
    };
    let m = serde_json::from_str(&text)
        .map_err(|e| FlashError::BadImage { path: path.to_path_buf(), why: format!("not an image manifest: {e}") })?;
    Ok(Some((path.to_path_buf(), m)))
}

/// Walks a zstd file's frames and blocks without decompressing them: the
/// sum of the frames' declared content sizes (`None` if a frame does not
/// declare it), or where the file stops making sense.
fn zstd_content_size(mut r: impl Read + Seek, len: u64) -> Result<Option<u64>, String> {
    let mut pos = 0u64;
    let mut total = Some(0u64);
    let mut frames = 0;
    let truncated = |at: u64, what: &str| format!("truncated or damaged zstd data: {what} at byte {at} of {len}");
    // Reads `buf` at `pos` and moves on, or says where the file ended.
    let read = |r: &mut dyn Read, pos: &mut u64, buf: &mut [u8], what: &str| {
        r.read_exact(buf).map_err(|_| truncated(*pos, what))?;
        *pos += buf.len() as u64;
        Ok::<(), String>(())
    };
    while pos < len {
        let mut magic = [0u8; 4];
        read(&mut r, &mut pos, &mut magic, "a frame header ends")?;
        let m = u32::from_le_bytes(magic);
        if m & 0xffff_fff0 == 0x184d_2a50 {
            // A skippable frame.
            let mut n = [0u8; 4];
            read(&mut r, &mut pos, &mut n, "a skippable frame ends")?;
            pos = skip(&mut r, pos, u64::from(u32::from_le_bytes(n)), len)
                .map_err(|at| truncated(at, "a skippable frame ends"))?;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(format!("damaged zstd data: no frame starts at byte {pos}, {frames} frames in"));
        }
        frames += 1;
        let mut fhd = [0u8; 1];
        read(&mut r, &mut pos, &mut fhd, "a frame header ends")?;
        let fhd = fhd[0];
        let single = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict = [0usize, 1, 2, 4][usize::from(fhd & 3)];
        let fcs = match fhd >> 6 {
            0 if single => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let mut header = vec![0u8; usize::from(!single) + dict + fcs];
        read(&mut r, &mut pos, &mut header, "a frame header ends")?;
        let fcs_bytes = &header[header.len() - fcs..];
        let mut size = [0u8; 8];
        size[..fcs].copy_from_slice(fcs_bytes);
        let size = u64::from_le_bytes(size) + if fcs == 2 { 256 } else { 0 };
        total = match (total, fcs) {
            (_, 0) => None,
            (t, _) => t.map(|t| t + size),
        };
        loop {
            let mut bh = [0u8; 3];
            read(&mut r, &mut pos, &mut bh, "a block header ends")?;
            let bh = u32::from(bh[0]) | u32::from(bh[1]) << 8 | u32::from(bh[2]) << 16;
            let last = bh & 1 != 0;
            let body = match (bh >> 1) & 3 {
                1 => 1,
                3 => return Err(format!("damaged zstd data: a reserved block type at byte {}", pos - 3)),
                _ => u64::from(bh >> 3),
            };
            pos = skip(&mut r, pos, body, len).map_err(|at| truncated(at, "a block ends"))?;
            if last {
                break;
            }
        }
        if checksum {
            pos = skip(&mut r, pos, 4, len).map_err(|at| truncated(at, "a frame's checksum ends"))?;
        }
    }
    if frames == 0 {
        return Err("it holds no zstd frame".into());
    }
    Ok(total)
}

/// Seeks `n` bytes on; `Err(where the file ends)` when it ends first.
fn skip(r: &mut impl Seek, pos: u64, n: u64, len: u64) -> Result<u64, u64> {
    let to = pos + n;
    if to > len {
        return Err(len);
    }
    r.seek(SeekFrom::Start(to)).map_err(|_| pos)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| if i % 4096 < 2048 { 0 } else { (i * 7 % 251) as u8 }).collect()
    }

    fn zst(data: &[u8], pledged: bool) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        if pledged {
            e.set_pledged_src_size(Some(data.len() as u64)).unwrap();
        }
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_sizes_come_from_the_frames() {
        let data = sample(3 << 20);
        let one = zst(&data, true);
        assert_eq!(zstd_content_size(std::io::Cursor::new(&one), one.len() as u64), Ok(Some(3 << 20)));
        // Two frames (as pzstd writes) add up.
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(zstd_content_size(std::io::Cursor::new(&two), two.len() as u64), Ok(Some(6 << 20)));
        // A stream that does not say its size.
        let open = zst(&data, false);
        assert_eq!(zstd_content_size(std::io::Cursor::new(&open), open.len() as u64), Ok(None));
        // Cut anywhere: refused, saying where.
        for cut in [3, 5, one.len() / 2, one.len() - 2] {
            let err = zstd_content_size(std::io::Cursor::new(&one[..cut]), cut as u64).unwrap_err();
            assert!(err.contains("truncated") && err.contains(&format!("of {cut}")), "{cut}: {err}");
        }
        let err =
            zstd_content_size(std::io::Cursor::new(&[one.clone(), vec![1, 2, 3, 4, 5]].concat()), one.len() as u64 + 5);
        assert!(err.unwrap_err().contains("no frame starts at byte"));
    }

    #[test]
    fn opens_each_format_and_finds_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(1 << 20);
        let raw = dir.path().join("p.img");
        std::fs::write(&raw, &data).unwrap();
        std::fs::write(dir.path().join("p.img.zst"), zst(&data, false)).unwrap();
        let mut xz = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        std::io::Write::write_all(&mut xz, &data).unwrap();
        std::fs::write(dir.path().join("p.img.xz"), xz.finish().unwrap()).unwrap();
        std::fs::write(
            dir.path().join("p.img.manifest.json"),
            format!(
                r#"{{"board":"rpi4","arch":"arm64","parts":[{{"name":"image","size":{},"sha256":"00"}}]}}"#,
                1 << 20
            ),
        )
        .unwrap();
        for (name, format) in [("p.img", Format::Raw), ("p.img.zst", Format::Zstd), ("p.img.xz", Format::Xz)] {
            let img = Image::open(&dir.path().join(name)).unwrap();
            assert_eq!((img.format, img.size), (format, 1 << 20), "{name}");
            assert_eq!(img.manifest.as_ref().unwrap().1.board, "rpi4");
            let mut back = Vec::new();
            img.reader().unwrap().read_to_end(&mut back).unwrap();
            assert!(back == data, "{name}");
        }
        // The manifest disagrees with the image: refused.
        std::fs::write(dir.path().join("q.img"), &data[..4096]).unwrap();
        std::fs::copy(dir.path().join("p.img.manifest.json"), dir.path().join("q.img.manifest.json")).unwrap();
        let err = Image::open(&dir.path().join("q.img")).unwrap_err().to_string();
        assert!(err.contains("do not belong together"), "{err}");
        // Named .xz, holding something else.
        std::fs::write(dir.path().join("r.img.xz"), &data[..4096]).unwrap();
        let err = Image::open(&dir.path().join("r.img.xz")).unwrap_err().to_string();
        assert!(err.contains("not xz data"), "{err}");
    }
}
