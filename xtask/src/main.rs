//! `cargo xtask`: the project's automation.
//!
//! * `cargo xtask test`: formatting, clippy, unit tests, then the integration suite against a
//!   freshly started local Synapse (always stopped afterwards).
//! * `cargo xtask demo`: the end-to-end example scenario against a local Synapse.
//! * `cargo xtask bench`: our paths against the stock matrix-sdk paths (release build), written
//!   to `docs/benchmarks.md`.
//! * `cargo xtask layers`: the one-way rule between `sdk-ext`'s layers, from its module paths.
//! * `cargo xtask fuzz [TARGET] [--time SECS] [--runs N]`: the fuzz targets (cargo-fuzz).
//! * `cargo xtask crash-trials [N]`: SIGKILL trials of the state store's writers.
//! * `cargo xtask synapse start|stop|status|logs`: manage a long-lived local Synapse by hand.

mod fuzz;
mod layers;
mod test;

use xtask::{cmd, synapse};

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test                      fmt check, clippy, unit tests, integration suite against Synapse
  demo                      run the example scenario against a local Synapse
  bench                     benchmarks, ours against stock matrix-sdk, into docs/benchmarks.md
  fuzz [TARGET] [--time SECS] [--runs N]
                            run the fuzz targets (all by default, 60 s each), installing
                            cargo-fuzz into target/tools if needed
  fuzz-seeds                write the committed seed corpora of the fuzz targets
  crash-trials [N]          N (default 50) SIGKILL trials per scenario of the state store
  layers [--graph] [DIR]    check sdk-ext's layer rule (no feature imports another, nothing
                            imports upwards, no import cycle); --graph prints every import
  synapse start             install (if needed) and start a local Synapse in the background
  synapse stop              stop the Synapse started by `synapse start` (by its PID)
  synapse status            tell whether that Synapse is running and answering
  synapse logs [N]          print the last N (default 50) lines of its log
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = workspace_root()?;

    match args.as_slice() {
        ["test"] => test::run(&root),
        ["demo"] => test::demo(&root),
        ["bench"] => test::bench(&root),
        ["layers", rest @ ..] => layers::run(&root, rest),
        ["fuzz-seeds"] => fuzz::seeds(&root),
        ["crash-trials"] => test::crash_trials(&root, 50),
        ["crash-trials", n] => {
            test::crash_trials(&root, n.parse().context("the trial count must be a number")?)
        }
        ["fuzz", rest @ ..] => fuzz::cli(&root, rest),
        ["synapse", "start"] => synapse::cli_start(&root),
        ["synapse", "stop"] => synapse::cli_stop(&root),
        ["synapse", "status"] => synapse::cli_status(&root),
        ["synapse", "logs"] => synapse::cli_logs(&root, 50),
        ["synapse", "logs", n] => {
            synapse::cli_logs(&root, n.parse().context("the line count must be a number")?)
        }
        [] | ["help"] | ["--help"] | ["-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command `{}`\n\n{USAGE}", args.join(" ")),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .context("the xtask crate must live inside the workspace")
}
