//! `cargo xtask test` and `cargo xtask demo`.

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    cmd,
    synapse::{self, Synapse, URL_ENV},
};

/// The package holding the integration suite and the demo binary.
const INTEGRATION_PACKAGE: &str = "integration-tests";

/// The stock-client crate: outside the workspace, so matrix-sdk's experimental encrypted-state
/// feature it enables never reaches our crates.
const STOCK_CLIENT_MANIFEST: &str = "interop/stock-client/Cargo.toml";
/// The environment variable through which the interop tests find the stock client.
const STOCK_CLIENT_ENV: &str = "STOCK_CLIENT_BIN";

fn stock_client_bin(root: &Path) -> std::path::PathBuf {
    root.join("target").join("stock-client").join("debug").join("stock-client")
}

/// Builds the stock client with its own lock file and target directory.
fn build_stock_client(root: &Path) -> Result<std::path::PathBuf> {
    let target = root.join("target").join("stock-client");
    let target = target.to_str().unwrap_or_default();
    cmd::run(
        root,
        "cargo",
        &["build", "--locked", "--manifest-path", STOCK_CLIENT_MANIFEST, "--target-dir", target],
        &[],
    )?;
    Ok(stock_client_bin(root))
}

/// The matrix-js-sdk peer (Element Web's engine) the interop tests drive.
const JS_PEER_DIR: &str = "interop/js-peer";
/// The environment variable through which the interop tests find the peer's program.
const JS_PEER_ENV: &str = "JS_PEER";

/// Installs the matrix-js-sdk peer's packages exactly as its lock file pins them (`npm ci`),
/// with Node.js and npm as present on the machine; says what is missing when they are not.
fn install_js_peer(root: &Path) -> Result<std::path::PathBuf> {
    for tool in ["node", "npm"] {
        if !cmd::succeeds(tool, &["--version"]) {
            bail!(
                "`{tool}` not found: the matrix-js-sdk interop tests need Node.js 20 or newer with \
                 npm (Debian: `apt-get install nodejs npm`)"
            );
        }
    }
    cmd::run(&root.join(JS_PEER_DIR), "npm", &["ci", "--no-audit", "--no-fund"], &[])?;
    Ok(root.join(JS_PEER_DIR).join("peer.mjs"))
}

/// Fails if any workspace crate turns on matrix-sdk-base's `experimental-encrypted-state-events`,
/// the stock path that applies decrypted state without validation (cargo would unify it into
/// every crate of the build).
fn check_no_base_encrypted_state(root: &Path) -> Result<()> {
    let output = std::process::Command::new("cargo")
        .args(["tree", "--workspace", "-e", "features", "-i", "matrix-sdk-base"])
        .current_dir(root)
        .output()?;
    if !output.status.success() {
        bail!("cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    if tree.contains("matrix-sdk-base feature \"experimental-encrypted-state-events\"") {
        bail!(
            "the workspace enables matrix-sdk-base's experimental-encrypted-state-events; keep it \
             in a crate outside the workspace (see interop/stock-client)"
        );
    }
    println!("matrix-sdk-base is built without experimental-encrypted-state-events");
    Ok(())
}

/// The crates an app depends on: packaged (`cargo package`) in every run.
const LIBRARY_CRATES: [&str; 3] = ["crypto-ext", "state-store-ext", "sdk-ext"];

/// `cargo <command> -p <each library crate> <extra..>`.
fn for_library_crates<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command];
    for krate in LIBRARY_CRATES {
        args.extend(["--package", krate]);
    }
    args.extend(extra);
    args
}

/// The PID of the Synapse this process runs, for the Ctrl-C / SIGTERM handler.
static RUNNING_PID: Mutex<Option<u32>> = Mutex::new(None);

/// Stops the Synapse when dropped, whatever way the run ends (error, panic).
struct SynapseGuard(Synapse);

impl SynapseGuard {
    fn start(root: &Path, label: &str) -> Result<Self> {
        install_interrupt_handler();
        let synapse = synapse::start(root, label)?;
        *RUNNING_PID.lock().unwrap_or_else(|e| e.into_inner()) = Some(synapse.pid);
        Ok(Self(synapse))
    }
}

impl Drop for SynapseGuard {
    fn drop(&mut self) {
        if let Err(error) = self.0.stop() {
            eprintln!("xtask: could not stop Synapse (pid {}): {error:#}", self.0.pid);
        }
        *RUNNING_PID.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn install_interrupt_handler() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let result = ctrlc::set_handler(|| {
            let pid = *RUNNING_PID.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pid) = pid {
                eprintln!("\nxtask: interrupted, stopping Synapse (pid {pid})");
                let _ = synapse::stop_pid(pid);
            }
            std::process::exit(130);
        });
        if let Err(error) = result {
            eprintln!("xtask: warning: no interrupt handler ({error}); Ctrl-C may leave Synapse");
        }
    });
}

struct Step {
    name: &'static str,
    outcome: Result<()>,
    took: Duration,
}

fn step(steps: &mut Vec<Step>, name: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
    println!("\n==> {name}");
    let start = Instant::now();
    let outcome = f();
    let ok = outcome.is_ok();
    if let Err(error) = &outcome {
        eprintln!("xtask: {name} failed: {error:#}");
    }
    steps.push(Step { name, outcome, took: start.elapsed() });
    ok
}

/// How the test binaries are run: cargo-nextest when installed (one build serves both the unit
/// and the integration run, selected by filter), plain `cargo test` otherwise.
enum Runner {
    Nextest,
    CargoTest,
}

impl Runner {
    fn detect() -> Self {
        if cmd::succeeds("cargo", &["nextest", "--version"]) {
            Self::Nextest
        } else {
            println!("xtask: cargo-nextest not found, using cargo test");
            Self::CargoTest
        }
    }

    /// Runs the unit tests (`integration == false`) or the integration suite.
    fn run(&self, root: &Path, integration: bool, envs: &[(&str, &str)]) -> Result<()> {
        match self {
            Self::Nextest => {
                let filter = if integration {
                    format!("package({INTEGRATION_PACKAGE})")
                } else {
                    format!("not package({INTEGRATION_PACKAGE})")
                };
                let args = ["nextest", "run", "--workspace", "--no-fail-fast", "-E", &filter];
                cmd::run(root, "cargo", &args, envs)
            }
            // Selecting packages changes cargo's feature unification, hence a second build.
            Self::CargoTest if integration => {
                cmd::run(root, "cargo", &["test", "--package", INTEGRATION_PACKAGE], envs)
            }
            Self::CargoTest => cmd::run(
                root,
                "cargo",
                &["test", "--workspace", "--exclude", INTEGRATION_PACKAGE],
                envs,
            ),
        }
    }
}

/// `cargo xtask test`: every check and suite; non-zero exit if any fails.
pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let mut steps = Vec::new();
    let cargo = |args: &[&str]| cmd::run(root, "cargo", args, &[]);
    let runner = Runner::detect();

    step(&mut steps, "format check", || {
        cargo(&["fmt", "--all", "--", "--check"])?;
        // The fuzz targets are a workspace of their own.
        cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])
    });
    step(&mut steps, "no stock encrypted-state path in the workspace", || {
        check_no_base_encrypted_state(root)
    });
    step(&mut steps, "sdk-ext layer rule", || crate::layers::run(root, &[]));
    step(&mut steps, "clippy", || {
        cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
    });
    step(&mut steps, "docs of the library crates and bots, rustdoc warnings denied", || {
        let mut args = for_library_crates("doc", &["--no-deps"]);
        args.extend(["--package", "example-bots"]);
        cmd::run(root, "cargo", &args, &[("RUSTDOCFLAGS", "-D warnings")])
    });
    // Without verification: verifying would build each crate again from its archive against
    // crates.io. `--allow-dirty`: the check is of the manifests and file lists, not of git.
    step(&mut steps, "packaging of the library crates", || {
        cargo(&for_library_crates("package", &["--no-verify", "--allow-dirty"]))
    });
    // One build of every test target, before the server starts, so Synapse never idles
    // through a compile.
    let built =
        step(&mut steps, "build every test", || cargo(&["test", "--workspace", "--no-run"]));
    let stock_built = step(&mut steps, "build the stock matrix-sdk client (interop)", || {
        build_stock_client(root).map(drop)
    });
    let js_installed = step(&mut steps, "install the matrix-js-sdk peer (npm ci)", || {
        install_js_peer(root).map(drop)
    });
    if built && stock_built && js_installed {
        step(&mut steps, "doc tests", || cargo(&["test", "--workspace", "--doc"]));
        step(&mut steps, "unit tests", || runner.run(root, false, &[]));
        step(&mut steps, "crash trials, 3 per scenario", || crash_trials(root, 3));
        // Every fuzz target builds and runs briefly from its seeds, so none rots.
        step(&mut steps, "fuzz targets, 20,000 runs each", || {
            crate::fuzz::run(
                root,
                crate::fuzz::TARGETS,
                crate::fuzz::Budget { seconds: 60, runs: Some(20_000) },
            )
        });
        step(&mut steps, "benchmarks, once at a tiny size", || {
            cargo(&["run", "--quiet", "--package", "benches", "--bin", "bench", "--", "--quick"])
        });
        step(&mut steps, "integration suite against Synapse", || {
            let stock = stock_client_bin(root);
            let stock = stock.to_str().unwrap_or_default();
            let js_peer = root.join(JS_PEER_DIR).join("peer.mjs");
            let js_peer = js_peer.to_str().unwrap_or_default();
            let guard = SynapseGuard::start(root, "test")?;
            let envs = [
                (URL_ENV, guard.0.url.as_str()),
                (STOCK_CLIENT_ENV, stock),
                (JS_PEER_ENV, js_peer),
            ];
            let result = runner.run(root, true, &envs);
            if result.is_err() {
                eprintln!(
                    "xtask: last Synapse log lines:\n{}",
                    synapse::log_tail(&guard.0.dir, 30)
                );
            }
            let dir = guard.0.dir.clone();
            drop(guard);
            if result.is_ok() {
                // The run's data is only kept when something failed.
                let _ = std::fs::remove_dir_all(dir);
            }
            result
        });
    }

    println!("\n==> summary");
    for step in &steps {
        let verdict = if step.outcome.is_ok() { "ok    " } else { "FAILED" };
        println!("  {verdict} {:<40} {:>7.1}s", step.name, step.took.as_secs_f64());
    }
    println!("  total {:.1}s", started.elapsed().as_secs_f64());
    let failed: Vec<&str> = steps.iter().filter(|s| s.outcome.is_err()).map(|s| s.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask crash-trials [N]`: `trials` SIGKILL trials per scenario (see
/// `tests/src/bin/crash-trials.rs`).
pub fn crash_trials(root: &Path, trials: usize) -> Result<()> {
    let trials = trials.to_string();
    cmd::run(
        root,
        "cargo",
        &[
            "run",
            "--quiet",
            "--package",
            INTEGRATION_PACKAGE,
            "--bin",
            "crash-trials",
            "--",
            &trials,
        ],
        &[],
    )
}

/// `cargo xtask demo`: the example scenario against a local Synapse.
pub fn demo(root: &Path) -> Result<()> {
    cmd::run(root, "cargo", &["build", "--package", INTEGRATION_PACKAGE, "--bin", "demo"], &[])?;
    let guard = SynapseGuard::start(root, "demo")?;
    let result = cmd::run(
        root,
        "cargo",
        &["run", "--quiet", "--package", INTEGRATION_PACKAGE, "--bin", "demo"],
        &[(URL_ENV, &guard.0.url)],
    );
    drop(guard);
    result
}

/// `cargo xtask bench`: every workload, ours against stock, in a release build; the table goes
/// to `docs/benchmarks.md` with the scaling plot. Installs valgrind from Debian's packages first
/// if it is missing (the instruction counts run under callgrind).
pub fn bench(root: &Path) -> Result<()> {
    ensure_valgrind(root)?;
    cmd::run(
        root,
        "cargo",
        &["run", "--release", "--quiet", "--package", "benches", "--bin", "bench", "--", "--write"],
        &[],
    )
}

/// Installs valgrind with `apt-get` (through `sudo` when not root) unless it runs already.
fn ensure_valgrind(root: &Path) -> Result<()> {
    if cmd::succeeds("valgrind", &["--version"]) {
        return Ok(());
    }
    let root_user = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let (program, prefix): (&str, &[&str]) =
        if root_user { ("apt-get", &[]) } else { ("sudo", &["apt-get"]) };
    let apt = |args: &[&str]| {
        let all: Vec<&str> = prefix.iter().chain(args).copied().collect();
        cmd::run(root, program, &all, &[("DEBIAN_FRONTEND", "noninteractive")])
    };
    apt(&["update"])?;
    apt(&["install", "--yes", "--no-install-recommends", "valgrind"])?;
    if !cmd::succeeds("valgrind", &["--version"]) {
        bail!("valgrind was installed but does not run");
    }
    Ok(())
}
