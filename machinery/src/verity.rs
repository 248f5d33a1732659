//! The dm-verity parameters of a root partition, as image-builder puts them
//! on the kernel command line and init hands them to the kernel.
//!
//! A root partition holds the squashfs, zero-padded to a whole number of
//! 4 KiB blocks, then its hash tree (`veritysetup format --no-superblock`,
//! sha256, 4 KiB data and hash blocks): the tree starts right after the
//! data, at block `data_blocks`. The command line carries
//! `plinth.verity=<data_blocks>:<root hash>:<salt>`; on a UEFI board it is
//! part of the UKI, so Secure Boot's signature covers it.

/// Kernel command-line key carrying a root's verity parameters.
pub const CMDLINE_VERITY: &str = "plinth.verity=";
/// Data and hash block size, in bytes.
pub const BLOCK: u64 = 4096;
/// The hash algorithm.
pub const HASH: &str = "sha256";
/// The device-mapper target and the name of the verified root device.
pub const TARGET: &str = "verity";
pub const DEVICE_NAME: &str = "plinth-root";

/// What the kernel needs to verify a root partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootVerity {
    /// The squashfs' size in blocks; the hash tree starts at this block.
    pub data_blocks: u64,
    /// The top of the hash tree (hex).
    pub root_hash: String,
    /// The salt mixed into every hash (hex; `-` for none).
    pub salt: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}{word}: {why} (expected {key}<data blocks>:<sha256 root hash>:<salt>)", key = CMDLINE_VERITY)]
pub struct VerityError {
    pub word: String,
    pub why: &'static str,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RootVerity {
    /// The command-line word.
    pub fn word(&self) -> String {
        format!("{CMDLINE_VERITY}{}:{}:{}", self.data_blocks, self.root_hash, self.salt)
    }

    /// The verity parameters on a command line: `None` when it has none,
    /// an error when the word is malformed (a boot must not fall back to
    /// an unverified root because of a typo).
    pub fn from_cmdline(cmdline: &str) -> Result<Option<RootVerity>, VerityError> {
        let Some(value) = cmdline.split_whitespace().find_map(|w| w.strip_prefix(CMDLINE_VERITY)) else {
            return Ok(None);
        };
        let err = |why| VerityError { word: value.to_string(), why };
        let mut it = value.split(':');
        let (Some(blocks), Some(root_hash), Some(salt), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(err("not three fields separated by ':'"));
        };
        let data_blocks = blocks.parse::<u64>().ok().filter(|b| *b > 0).ok_or_else(|| err("no block count"))?;
        if !(is_hex(root_hash) && root_hash.len() == 64) {
            return Err(err("the root hash is not 64 hex digits"));
        }
        if !(salt == "-" || is_hex(salt)) {
            return Err(err("the salt is neither hex nor -"));
        }
        Ok(Some(RootVerity { data_blocks, root_hash: root_hash.to_ascii_lowercase(), salt: salt.to_string() }))
    }

    /// The data area in 512-byte sectors: the verified device's length.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK / 512)
    }

    /// Where the hash tree starts, in bytes from the partition's start.
    pub fn hash_offset(&self) -> u64 {
        self.data_blocks * BLOCK
    }

    /// The dm-verity target's parameters (format version 1) for data and
    /// hash tree on the same device `dev` (`major:minor` or a path).
    pub fn table_params(&self, dev: &str) -> String {
        format!(
            "1 {dev} {dev} {BLOCK} {BLOCK} {} {} {HASH} {} {}",
            self.data_blocks, self.data_blocks, self.root_hash, self.salt
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> RootVerity {
        RootVerity { data_blocks: 12, root_hash: "ab".repeat(32), salt: "0f".repeat(32) }
    }

    #[test]
    fn the_word_reads_back_and_makes_the_kernel_table() {
        let line = format!("console=ttyS0 {} panic=10", v().word());
        assert_eq!(RootVerity::from_cmdline(&line), Ok(Some(v())));
        assert_eq!(RootVerity::from_cmdline("console=ttyS0 plinth.slot=a"), Ok(None));
        assert_eq!(v().sectors(), 96);
        assert_eq!(v().hash_offset(), 12 * 4096);
        assert_eq!(
            v().table_params("/dev/vda2"),
            format!("1 /dev/vda2 /dev/vda2 4096 4096 12 12 sha256 {} {}", "ab".repeat(32), "0f".repeat(32))
        );
    }

    #[test]
    fn a_malformed_word_is_an_error_naming_it() {
        for (word, why) in [
            ("plinth.verity=12", "three fields"),
            ("plinth.verity=x:ab:cd", "block count"),
            ("plinth.verity=0:ab:cd", "block count"),
            ("plinth.verity=12:abc:-", "64 hex"),
            ("plinth.verity=12:1:2:3", "three fields"),
        ] {
            let e = RootVerity::from_cmdline(word).unwrap_err();
            assert!(e.to_string().contains(why), "{word}: {e}");
            assert!(e.to_string().contains(word), "{word}: {e}");
        }
        let salt = format!("plinth.verity=12:{}:zz", "ab".repeat(32));
        assert!(RootVerity::from_cmdline(&salt).unwrap_err().to_string().contains("salt"));
    }
}
