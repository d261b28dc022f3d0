//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer).
//!
//! cargo-fuzz is installed into `target/tools` on first use (from crates.io, pinned). The
//! targets build on the stable toolchain: without a sanitizer (`-s none`, whose flags are all
//! stable), in release mode with debug assertions, so overflow checks and `debug_assert!`s
//! still fire. Each run reads the committed seeds (`fuzz/seeds/<target>`) and grows a working
//! corpus in `target/fuzz-corpus/<target>`; a crash is written to `fuzz/artifacts/<target>`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Every target: one per parser of bytes another party controls.
pub const TARGETS: &[&str] = &[
    "packed_state_key",
    "state_payload",
    "encrypted_event",
    "bundle_plaintext",
    "to_device",
    "store_value",
];

/// The cargo-fuzz release installed when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// How a run is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Seconds per target (`-max_total_time`).
    pub seconds: u64,
    /// Executions per target (`-runs`), when set.
    pub runs: Option<u64>,
}

/// `cargo xtask fuzz [TARGET] [--time SECS] [--runs N]`.
pub fn cli(root: &Path, args: &[&str]) -> Result<()> {
    let mut budget = Budget { seconds: 60, runs: None };
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--time" => {
                let value = args.next().context("--time needs a number of seconds")?;
                budget.seconds = value.parse().context("--time needs a number of seconds")?;
            }
            "--runs" => {
                let value = args.next().context("--runs needs a number")?;
                budget.runs = Some(value.parse().context("--runs needs a number")?);
            }
            target if TARGETS.contains(&target) => targets.push(target),
            other => {
                bail!("unknown fuzz target or option `{other}` (targets: {})", TARGETS.join(", "))
            }
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    run(root, &targets, budget)
}

/// Builds the targets and runs each of `targets` within `budget`.
pub fn run(root: &Path, targets: &[&str], budget: Budget) -> Result<()> {
    let path = with_cargo_fuzz(root)?;
    let envs = [("PATH", path.as_str())];
    let fuzz_dir = root.join("fuzz");
    cmd::run(&fuzz_dir, "cargo", &["fuzz", "build", "-s", "none", "-O", "-a"], &envs)?;
    for target in targets {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let corpus = corpus.to_str().context("a UTF-8 path")?.to_owned();
        let seeds = seeds.to_str().context("a UTF-8 path")?.to_owned();
        let time = format!("-max_total_time={}", budget.seconds);
        let runs = budget.runs.map(|runs| format!("-runs={runs}"));
        let mut args = vec!["fuzz", "run", "-s", "none", "-O", "-a", target, &corpus, &seeds, "--"];
        args.extend([time.as_str(), "-print_final_stats=1"]);
        if let Some(runs) = &runs {
            args.push(runs);
        }
        cmd::run(&fuzz_dir, "cargo", &args, &envs)?;
    }
    Ok(())
}

/// `cargo xtask fuzz-seeds`: writes the seed corpora from what the code really produces.
pub fn seeds(root: &Path) -> Result<()> {
    cmd::run(&root.join("fuzz"), "cargo", &["test", "--test", "seeds", "--", "--ignored"], &[])
}

/// The `PATH` with cargo-fuzz on it, installing cargo-fuzz into `target/tools` if needed.
fn with_cargo_fuzz(root: &Path) -> Result<String> {
    let tools = root.join("target/tools");
    let bin: PathBuf = tools.join("bin");
    if !bin.join("cargo-fuzz").exists() {
        let tools = tools.to_str().context("a UTF-8 path")?;
        cmd::run(
            root,
            "cargo",
            &[
                "install",
                "--locked",
                "--root",
                tools,
                "--version",
                CARGO_FUZZ_VERSION,
                "cargo-fuzz",
            ],
            &[],
        )?;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    Ok(format!("{}:{path}", bin.display()))
}
