use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Builds bootable Plinth disk images.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a raw GPT disk image for a board.
    Build {
        /// Board name (board-configs/<name>.toml) or a board file.
        #[arg(long)]
        board: String,
        /// The operator's config-signing public key (from `osctl gen keys`).
        #[arg(long)]
        trust_key: PathBuf,
        /// Output image.
        #[arg(short, long)]
        out: PathBuf,
        /// Static plinth-init and apid (scripts/build-static.sh builds them).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/x86_64-unknown-linux-gnu/release"))]
        bin_dir: PathBuf,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs"))]
        board_dir: PathBuf,
        /// Downloaded packages are kept here (default: ~/.cache/plinth).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let Cmd::Build { board, trust_key, out, bin_dir, board_dir, cache_dir } = Cli::parse().command;
    let cache_dir = cache_dir.unwrap_or_else(image_builder::default_cache_dir);
    let opts = image_builder::BuildOptions { board, board_dir, trust_key, bin_dir, out, cache_dir };
    let m = image_builder::build(&opts).map_err(|e| anyhow::anyhow!("image-builder: {e}"))?;
    println!("{}", opts.out.display());
    eprintln!(
        "{} for {}: {} {}; manifest {}",
        opts.out.display(),
        m.board,
        m.kernel_package,
        m.kernel_version,
        image_builder::manifest_path(&opts.out).display()
    );
    Ok(())
}
