//! UEFI Secure Boot with a key the operator owns: `sbsign` (Debian's
//! sbsigntool) signs systemd-boot and the UKI with it; `secure-boot-keys`
//! makes the key pair (`openssl req`, RSA 2048: what OVMF and PC firmware
//! verify Authenticode signatures with) and an OVMF variable store with
//! its certificate enrolled as PK, KEK and db and Secure Boot on
//! (`virt-fw-vars`, Debian's python3-virt-firmware), for QEMU and as the
//! reference for enrolling a real machine's firmware.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, tools};

/// The operator's Secure Boot signing key and certificate (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBootKey {
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// The files `generate` writes in its directory.
pub const KEY_FILE: &str = "secureboot.key";
pub const CERT_FILE: &str = "secureboot.crt";
/// OVMF's 4 MiB variable store with the certificate enrolled.
pub const OVMF_VARS_FILE: &str = "OVMF_VARS_4M.secboot.fd";
/// Debian's blank 4 MiB store (package ovmf), the base of [`OVMF_VARS_FILE`].
pub const OVMF_VARS_BLANK: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The owner GUID the enrolled certificate is filed under.
pub const OWNER_GUID: &str = "9f3b4bd4-8ab7-4bd8-a8a5-2d1f6b5b7c11";

impl SecureBootKey {
    /// Checks that both files exist and the signer is installed.
    pub fn check(&self) -> Result<(), BuildError> {
        tools::require("sbsign", "sbsigntool")?;
        for p in [&self.key, &self.cert] {
            std::fs::metadata(p).map_err(|e| BuildError::io("read the Secure Boot key file", p, e))?;
        }
        Ok(())
    }

    /// Signs the PE image `input` into `output` (Authenticode).
    pub fn sign(&self, input: &Path, output: &Path) -> Result<(), BuildError> {
        let sbsign = tools::require("sbsign", "sbsigntool")?;
        tools::run(
            Command::new(sbsign)
                .arg("--key")
                .arg(&self.key)
                .arg("--cert")
                .arg(&self.cert)
                .arg("--output")
                .arg(output)
                .arg(input),
        )
    }
}

/// Writes a new key pair and an OVMF variable store that trusts it into
/// `dir` (never over existing files); returns the key.
pub fn generate(dir: &Path, common_name: &str) -> Result<SecureBootKey, BuildError> {
    let openssl = tools::require("openssl", "openssl")?;
    let vars_tool = tools::require("virt-fw-vars", "python3-virt-firmware")?;
    tools::require(OVMF_VARS_BLANK, "ovmf")?;
    std::fs::create_dir_all(dir).map_err(|e| BuildError::io("create", dir, e))?;
    let (key, cert, vars) = (dir.join(KEY_FILE), dir.join(CERT_FILE), dir.join(OVMF_VARS_FILE));
    for p in [&key, &cert, &vars] {
        if p.exists() {
            return Err(BuildError::io(
                "refusing to overwrite",
                p,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
    }
    let subject = format!("/CN={}", common_name.replace('/', "\\/"));
    tools::run(
        Command::new(openssl)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "3650", "-subj", &subject])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BuildError::io("chmod", &key, e))?;
    tools::run(
        Command::new(vars_tool)
            .arg("--input")
            .arg(OVMF_VARS_BLANK)
            .arg("--output")
            .arg(&vars)
            .args(["--set-pk", OWNER_GUID])
            .arg(&cert)
            .args(["--add-kek", OWNER_GUID])
            .arg(&cert)
            .args(["--add-db", OWNER_GUID])
            .arg(&cert)
            .arg("--secure-boot"),
    )?;
    Ok(SecureBootKey { key, cert })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs openssl, sbsigntool, python3-virt-firmware, ovmf and
    /// systemd-boot-efi (scripts/setup-debian.sh); with CI=true their
    /// absence is a failure.
    #[test]
    fn a_generated_key_signs_what_sbverify_then_accepts_and_the_store_enrolls_it() {
        let sdboot = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
        let missing: Vec<&str> = ["openssl", "sbsign", "sbverify", "virt-fw-vars"]
            .into_iter()
            .filter(|t| tools::require(t, "").is_err())
            .chain(
                [OVMF_VARS_BLANK, "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"]
                    .into_iter()
                    .filter(|f| !Path::new(f).exists()),
            )
            .collect();
        if !missing.is_empty() {
            assert!(std::env::var("CI").is_err(), "CI: {missing:?} missing: run scripts/setup-debian.sh");
            eprintln!("skipped: {missing:?} missing (scripts/setup-debian.sh)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let k = generate(d.path(), "Plinth test").unwrap();
        assert!(generate(d.path(), "again").unwrap_err().to_string().contains("refusing to overwrite"));
        let signed = d.path().join("sdboot.signed.efi");
        k.sign(sdboot, &signed).unwrap();
        let verify = |file: &Path| {
            Command::new("sbverify").arg("--cert").arg(&k.cert).arg(file).output().unwrap().status.success()
        };
        assert!(verify(&signed));
        assert!(!verify(sdboot), "the unsigned original does not verify");
        // One byte changed after signing: the signature no longer holds.
        let mut bytes = std::fs::read(&signed).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x01;
        let tampered = d.path().join("tampered.efi");
        std::fs::write(&tampered, &bytes).unwrap();
        assert!(!verify(&tampered));
        // The store holds the certificate as PK, KEK and db, Secure Boot on.
        let out = Command::new("virt-fw-vars")
            .arg("--input")
            .arg(d.path().join(OVMF_VARS_FILE))
            .arg("--print")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for var in ["PK", "KEK", "db"] {
            assert!(text.lines().any(|l| l.trim_start().starts_with(var)), "{var} in {text}");
        }
        assert!(text.contains("SecureBootEnable") && text.contains("ON"), "{text}");
    }
}
