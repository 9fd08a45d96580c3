//! The man pages (one per command) and the bash, zsh and fish completions,
//! written from the command line's definition (`src/args.rs`) into
//! `<target>/<profile>/dist/` (`man/man1/`, `completions/`), where the Debian package takes them
//! (`[package.metadata.deb]` in Cargo.toml: cargo-deb reads
//! `target/release/` as the profile's folder).

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;

pub fn write(out_dir: &Path) {
    println!("cargo:rerun-if-changed=src/args.rs");
    println!("cargo:rerun-if-changed=src/logging/format.rs");
    // OUT_DIR is <target>/<profile>/build/<pkg>/out.
    let dist = out_dir.ancestors().nth(3).unwrap_or(out_dir).join("dist");
    let man = dist.join("man").join("man1");
    let completions = dist.join("completions");
    for dir in [&man, &completions] {
        // Fresh each time: a command removed must not leave its page.
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    write_man_pages(Cli::command(), &man);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "vault-agent", &completions)
            .unwrap_or_else(|e| panic!("{shell} completions into {}: {e}", completions.display()));
    }
}

/// `<name>.1.gz` for `cmd` and each of its subcommands (`vault-agent-wait`),
/// gzipped as Debian wants them (cargo-deb compresses man pages, but not
/// built files). The gzip header carries no time: a rebuild gives the same
/// bytes.
fn write_man_pages(cmd: clap::Command, dir: &Path) {
    // No page lists clap's `help` subcommand: each command has its own page.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build(); // names each subcommand's page after its path
    write_man_page(&cmd, dir);
}

fn write_man_page(cmd: &clap::Command, dir: &Path) {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .unwrap_or_else(|e| panic!("man page of {name}: {e}"));
    let path = dir.join(format!("{name}.1.gz"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut gz = flate2::GzBuilder::new().write(file, flate2::Compression::best());
    gz.write_all(&page)
        .and_then(|_| gz.finish().map(drop))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man_page(sub, dir);
    }
}
