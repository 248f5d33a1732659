//! The root partition's dm-verity hash tree: `veritysetup format` (Debian's
//! cryptsetup-bin) over the squashfs, the tree appended after it in the
//! same partition image (`machinery::verity` has the layout and the kernel
//! table init loads).

use std::path::Path;
use std::process::Command;

use machinery::verity::{BLOCK, HASH, RootVerity};
use sha2::Digest as _;

use crate::{BuildError, tools};

/// The options every `veritysetup` call here shares (format and verify
/// must agree with `RootVerity::table_params`).
fn common(cmd: &mut Command, salt: &str) {
    cmd.args(["--no-superblock", "--hash", HASH])
        .arg(format!("--data-block-size={BLOCK}"))
        .arg(format!("--hash-block-size={BLOCK}"))
        .arg(format!("--salt={salt}"));
}

/// Writes `out`: `squashfs` padded to whole blocks, then its hash tree;
/// returns what the command line must carry. The salt is the squashfs'
/// sha256, so a build is reproducible and two roots never share one.
pub fn format(squashfs: &Path, out: &Path) -> Result<RootVerity, BuildError> {
    let veritysetup = tools::require("veritysetup", "cryptsetup-bin")?;
    let mut data = std::fs::read(squashfs).map_err(|e| BuildError::io("read", squashfs, e))?;
    let salt = crate::kernel::hex(&sha2::Sha256::digest(&data));
    data.resize((data.len() as u64).div_ceil(BLOCK).max(1) as usize * BLOCK as usize, 0);
    let data_blocks = data.len() as u64 / BLOCK;
    crate::write(out, &data)?;
    let tree = out.with_extension("hashtree");
    let mut cmd = Command::new(&veritysetup);
    cmd.arg("format");
    common(&mut cmd, &salt);
    let output = cmd
        .arg(out)
        .arg(&tree)
        .output()
        .map_err(|e| BuildError::Tool { what: format!("{} format", veritysetup.display()), detail: e.to_string() })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let root_hash = text.lines().find_map(|l| l.strip_prefix("Root hash:")).map(|h| h.trim().to_string());
    let root_hash = match root_hash {
        Some(h) if output.status.success() => h,
        _ => {
            return Err(BuildError::Tool {
                what: format!("veritysetup format {}", out.display()),
                detail: format!("{}: {}{}", output.status, text.trim(), String::from_utf8_lossy(&output.stderr).trim()),
            });
        }
    };
    let hashes = std::fs::read(&tree).map_err(|e| BuildError::io("read", &tree, e))?;
    data.extend_from_slice(&hashes);
    crate::write(out, &data)?;
    std::fs::remove_file(&tree).map_err(|e| BuildError::io("remove", &tree, e))?;
    let v = RootVerity { data_blocks, root_hash, salt };
    // What the kernel will check, checked once here: the command line's
    // word must read back as these parameters.
    match RootVerity::from_cmdline(&v.word()) {
        Ok(Some(back)) if back == v => Ok(v),
        other => {
            Err(BuildError::Tool { what: "veritysetup format".into(), detail: format!("unexpected output: {other:?}") })
        }
    }
}

/// `veritysetup verify` of a root partition image (userspace, no device
/// mapper): `Ok(false)` when its bytes do not match `v`.
pub fn verify(partition: &Path, v: &RootVerity) -> Result<bool, BuildError> {
    let veritysetup = tools::require("veritysetup", "cryptsetup-bin")?;
    let mut cmd = Command::new(veritysetup);
    cmd.arg("verify");
    common(&mut cmd, &v.salt);
    let out = cmd
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--hash-offset={}", v.hash_offset()))
        .arg(partition)
        .arg(partition)
        .arg(&v.root_hash)
        .output()
        .map_err(|e| BuildError::Tool { what: "veritysetup verify".into(), detail: e.to_string() })?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs cryptsetup-bin (scripts/setup-debian.sh); with CI=true its
    /// absence is a failure.
    #[test]
    fn the_tree_follows_the_padded_data_and_one_flipped_byte_fails_verification() {
        if tools::require("veritysetup", "cryptsetup-bin").is_err() {
            assert!(std::env::var("CI").is_err(), "CI: veritysetup missing: run scripts/setup-debian.sh");
            eprintln!("skipped: veritysetup missing (scripts/setup-debian.sh)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let sq = d.path().join("root.squashfs");
        // Not a multiple of the block size: the last block is padded.
        let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&sq, &content).unwrap();
        let part = d.path().join("root.img");
        let v = format(&sq, &part).unwrap();
        assert_eq!(v.data_blocks, 4);
        assert_eq!(v.salt, crate::kernel::hex(&sha2::Sha256::digest(&content)));
        let bytes = std::fs::read(&part).unwrap();
        assert_eq!(&bytes[..content.len()], &content[..]);
        assert!(bytes[content.len()..v.hash_offset() as usize].iter().all(|b| *b == 0), "zero padding");
        assert_eq!(bytes.len() as u64, v.hash_offset() + BLOCK, "one hash block for four data blocks");
        assert!(verify(&part, &v).unwrap());
        // Reproducible: the same input gives the same root hash.
        assert_eq!(format(&sq, &d.path().join("again.img")).unwrap(), v);

        // One byte changed anywhere in the data, the padding included.
        for at in [0usize, 5000, content.len() + 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let p = d.path().join(format!("bad-{at}.img"));
            std::fs::write(&p, &bad).unwrap();
            assert!(!verify(&p, &v).unwrap(), "a byte flipped at {at} is caught");
        }
    }
}
