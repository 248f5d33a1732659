//! `build --compress`: the image as it is published, streamed into
//! `<image>.zst` or `<image>.xz` beside it (the raw image stays, for QEMU).
//! zstd is the default choice: it decompresses at hundreds of MiB/s, faster
//! than any SD card writes, with a frame checksum `osctl image flash`
//! checks; xz is smaller and slower, for those who publish that way.

use std::fs::File;
use std::io::BufWriter;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use crate::BuildError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    Zstd,
    Xz,
}

/// zstd's level: 3, its default, keeps a 2-core build well above disk speed.
const ZSTD_LEVEL: i32 = 3;
/// xz's preset: 3 (of 0-9) is several times faster than the default 6 for
/// an image that is mostly squashfs (already compressed) and zeros.
const XZ_PRESET: u32 = 3;
/// xz blocks, compressed (and decompressible) in parallel.
const XZ_BLOCK: u64 = 16 << 20;

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
        }
    }
}

/// Compresses `image` into `<image>.zst|.xz` (through a temporary file and
/// a rename) with every core; returns the compressed file's path.
pub fn compress(image: &Path, how: Compression) -> Result<PathBuf, BuildError> {
    let out = PathBuf::from(format!("{}.{}", image.display(), how.extension()));
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let mut src = File::open(image).map_err(|e| BuildError::io("open", image, e))?;
    let len = src.metadata().map_err(|e| BuildError::io("stat", image, e))?.len();
    let dst = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| BuildError::io("create", &tmp, e))?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let werr = |e| BuildError::io("compress into", &tmp, e);
    let dst = match how {
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(dst, ZSTD_LEVEL).map_err(werr)?;
            z.include_checksum(true).map_err(werr)?;
            // The size in the frame header: osctl checks the device's size
            // before writing anything.
            z.set_pledged_src_size(Some(len)).map_err(werr)?;
            z.multithread(threads).map_err(werr)?;
            std::io::copy(&mut src, &mut z).map_err(werr)?;
            z.finish().map_err(werr)?
        }
        Compression::Xz => {
            let mut opts = lzma_rust2::XzOptions::with_preset(XZ_PRESET);
            opts.set_block_size(NonZeroU64::new(XZ_BLOCK));
            let mut x = lzma_rust2::XzWriterMt::new(dst, opts, threads).map_err(werr)?;
            std::io::copy(&mut src, &mut x).map_err(werr)?;
            x.finish().map_err(werr)?
        }
    };
    let file = dst.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(|e| BuildError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, &out).map_err(|e| BuildError::io("rename into place", &out, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn both_formats_round_trip_and_declare_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("plinth.img");
        // Zeros (the empty partitions) and less compressible bytes.
        let data: Vec<u8> = (0..(20usize << 20)).map(|i| if i < 12 << 20 { 0 } else { (i * 31 % 253) as u8 }).collect();
        std::fs::write(&image, &data).unwrap();

        let zst = compress(&image, Compression::Zstd).unwrap();
        assert_eq!(zst, dir.path().join("plinth.img.zst"));
        let bytes = std::fs::read(&zst).unwrap();
        assert!(bytes.len() < data.len() / 2);
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&bytes).ok(), Some(Some(data.len() as u64)));
        assert!(zstd::decode_all(&bytes[..]).unwrap() == data);

        let xz = compress(&image, Compression::Xz).unwrap();
        assert_eq!(lzma_rust2::xz_uncompressed_size(File::open(&xz).unwrap()).unwrap(), data.len() as u64);
        let mut back = Vec::new();
        lzma_rust2::XzReader::new(File::open(&xz).unwrap(), true).read_to_end(&mut back).unwrap();
        assert!(back == data);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
