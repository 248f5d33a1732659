use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Builds bootable Plinth disk images and signed upgrade bundles.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// What an image and a bundle are built from.
#[derive(Args)]
struct Common {
    /// Board name (board-configs/<name>.toml) or a board file.
    #[arg(long)]
    board: String,
    /// Output file.
    #[arg(short, long)]
    out: PathBuf,
    /// The Plinth version stamped into the root (what the node reports, and
    /// what upgrades compare).
    #[arg(long = "plinth-version", default_value = machinery::VERSION)]
    version: String,
    /// The security version: a node that commits it refuses every bundle
    /// and rollback below it. Raise it in a release that fixes a
    /// vulnerability (default: this build's machinery::SECURITY_VERSION).
    #[arg(long, default_value_t = machinery::SECURITY_VERSION)]
    security_version: u64,
    /// Static plinth-init, apid, orchestrator and plinth-pause for the
    /// board's architecture (scripts/build-static.sh builds them; default:
    /// $PLINTH_BIN_DIR, else target/<x86_64|aarch64>-unknown-linux-gnu/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs"))]
    board_dir: PathBuf,
    /// Downloaded packages are kept here (default: ~/.cache/plinth).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// An OCI image archive (`skopeo copy … oci-archive:FILE:NAME`, or
    /// `docker save`), or a directory of them (`*.tar`), to bake in: it is
    /// imported into containerd at boot, so pods run it without a registry.
    /// Repeatable.
    #[arg(long = "preload-image", value_name = "ARCHIVE|DIR")]
    preload_images: Vec<PathBuf>,
    /// Sign systemd-boot and the UKI for UEFI Secure Boot with this key
    /// (PEM; `image-builder secure-boot-keys` makes one). Needs
    /// --secure-boot-cert.
    #[arg(long, requires = "secure_boot_cert")]
    secure_boot_key: Option<PathBuf>,
    /// The certificate of --secure-boot-key (PEM), enrolled in the
    /// firmware's db.
    #[arg(long, requires = "secure_boot_key")]
    secure_boot_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a raw GPT disk image for a board.
    Build {
        #[command(flatten)]
        common: Common,
        /// The operator's config-signing public key (from `osctl gen keys`).
        #[arg(long)]
        trust_key: PathBuf,
        /// Also write the image compressed, as it is published: OUT.zst or OUT.xz.
        #[arg(long, value_enum)]
        compress: Option<image_builder::compress::Compression>,
    },
    /// Build a signed A/B upgrade bundle (.osb) for a board.
    Bundle {
        #[command(flatten)]
        common: Common,
        /// The operator's signing key (PEM, from `osctl gen keys`).
        #[arg(long)]
        key: PathBuf,
        /// The config-signing public key baked into the new root (default:
        /// the public half of --key).
        #[arg(long)]
        trust_key: Option<PathBuf>,
    },
    /// Make a Secure Boot key pair (secureboot.key, secureboot.crt) and an
    /// OVMF variable store with its certificate enrolled as PK, KEK and db
    /// and Secure Boot on (OVMF_VARS_4M.secboot.fd), in DIR.
    SecureBootKeys {
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's common name.
        #[arg(long, default_value = "Plinth Secure Boot")]
        common_name: String,
    },
}

fn options(c: Common, trust_key: PathBuf) -> anyhow::Result<image_builder::BuildOptions> {
    let bin_dir = match c.bin_dir.or_else(|| std::env::var_os("PLINTH_BIN_DIR").map(PathBuf::from)) {
        Some(d) => d,
        None => image_builder::default_bin_dir(image_builder::load_board(&c.board, &c.board_dir)?.arch),
    };
    Ok(image_builder::BuildOptions {
        board: c.board,
        board_dir: c.board_dir,
        trust_key,
        bin_dir,
        out: c.out,
        cache_dir: c.cache_dir.unwrap_or_else(image_builder::default_cache_dir),
        version: c.version,
        security_version: c.security_version,
        preload_images: c.preload_images,
        secure_boot: c
            .secure_boot_key
            .zip(c.secure_boot_cert)
            .map(|(key, cert)| image_builder::secureboot::SecureBootKey { key, cert }),
    })
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Build { common, trust_key, compress } => {
            let opts = options(common, trust_key)?;
            let m = image_builder::build(&opts).map_err(|e| anyhow::anyhow!("image-builder: {e}"))?;
            println!("{}", opts.out.display());
            if let Some(how) = compress {
                let out = image_builder::compress::compress(&opts.out, how)
                    .map_err(|e| anyhow::anyhow!("image-builder: {e}"))?;
                println!("{}", out.display());
            }
            eprintln!(
                "{} for {}: {} {}; manifest {}",
                opts.out.display(),
                m.board,
                m.kernel_package,
                m.kernel_version,
                image_builder::manifest_path(&opts.out).display()
            );
        }
        Cmd::Bundle { common, key, trust_key } => {
            let pem = std::fs::read_to_string(&key).map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
            let signing = machinery::signing::signing_key_from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            // The public half, baked into the new root, unless told otherwise.
            let work = tempfile::tempdir()?;
            let trust_key = match trust_key {
                Some(k) => k,
                None => {
                    let p = work.path().join("trusted-key.pub");
                    std::fs::write(&p, machinery::signing::verifying_key_to_pem(&signing.verifying_key())?)?;
                    p
                }
            };
            let opts = options(common, trust_key)?;
            let m = image_builder::bundle(&opts, &signing).map_err(|e| anyhow::anyhow!("image-builder: {e}"))?;
            println!("{}", opts.out.display());
            eprintln!(
                "{}: Plinth {} for {}, {} MiB of payload",
                opts.out.display(),
                m.version,
                m.board,
                m.payload_size() >> 20
            );
        }
        Cmd::SecureBootKeys { dir, common_name } => {
            let k = image_builder::secureboot::generate(&dir, &common_name)
                .map_err(|e| anyhow::anyhow!("image-builder: {e}"))?;
            println!("{}", k.key.display());
            println!("{}", k.cert.display());
            println!("{}", dir.join(image_builder::secureboot::OVMF_VARS_FILE).display());
            eprintln!(
                "keep {} secret; build with --secure-boot-key/--secure-boot-cert; enroll {} in the firmware (PK, KEK, db)",
                k.key.display(),
                k.cert.display()
            );
        }
    }
    Ok(())
}
