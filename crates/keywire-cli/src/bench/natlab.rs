//! `keywire bench natlab`: the long NAT-lab run (tests/natlab/lab.py bench) with this binary.
//!
//! The lab is Python (standard library) driving network namespaces and nftables, so it needs
//! root and a checkout of the repository; `KEYWIRE_NATLAB` overrides where lab.py is.

use std::path::PathBuf;

use anyhow::{bail, Context};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments passed on to `lab.py bench` (e.g. --trials 20).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let lab = std::env::var_os("KEYWIRE_NATLAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/natlab/lab.py"
            ))
        });
    if !lab.exists() {
        bail!("NAT lab not found at {} (set KEYWIRE_NATLAB to tests/natlab/lab.py of a keywire checkout)", lab.display());
    }
    let binary = std::env::current_exe().context("cannot find this binary's path")?;
    let status = tokio::process::Command::new("python3")
        .arg(&lab)
        .arg("bench")
        .arg("--binary")
        .arg(&binary)
        .args(&args.rest)
        .status()
        .await
        .context("cannot run python3 (the NAT lab needs it)")?;
    if !status.success() {
        bail!("the NAT lab failed ({status}); it needs root, nftables, conntrack and /dev/net/tun");
    }
    Ok(())
}
