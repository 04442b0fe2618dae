//! Shell completions and man pages generated from a clap definition, for
//! both binaries (`ca-client completions bash`, `ca-server man --out-dir DIR`).

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `shell`'s completion script for `command` (named `bin`) to stdout.
pub fn completions(mut command: clap::Command, bin: &str, shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut command, bin, &mut std::io::stdout());
}

/// Writes `<bin>.1` and one page per subcommand (`<bin>-<sub>.1`) into `dir`.
pub fn man_pages(command: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    eprintln!("man pages written to {}", dir.display());
    Ok(())
}
