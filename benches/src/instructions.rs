//! Instruction counts under `valgrind --tool=callgrind`, which do not move when the machine is
//! busy, unlike wall times.
//!
//! Each side of a workload (ours, stock, the primitives) runs once in a process of its own (this
//! binary with `--instructions-child`), twice: once stopping where the timed part starts, once
//! through it. Callgrind counts every thread of the process; the difference of the two totals
//! is the timed part's instructions (the setup, which creates random keys, differs by a few
//! thousand instructions between runs).

use std::{
    path::Path,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::Plan;

/// One side of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Ours,
    Stock,
    Primitives,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Stock => "stock",
            Side::Primitives => "primitives",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "ours" => Side::Ours,
            "stock" => Side::Stock,
            "primitives" => Side::Primitives,
            _ => bail!("unknown side {name}"),
        })
    }
}

/// What a child process runs: one side, through its timed part or only up to it.
#[derive(Clone, Copy, Debug)]
struct Child {
    side: Side,
    timed_part: bool,
}

/// Set once in a child process, before the workload runs.
static CHILD: OnceLock<Child> = OnceLock::new();

/// Whether this process runs `side` (every side, unless it is a child for another one).
pub(crate) fn runs(side: Side) -> bool {
    CHILD.get().is_none_or(|child| child.side == side)
}

/// Where a side's timed part starts: the clock, or `None` in a child that counts only the setup
/// (the side then returns at once).
pub(crate) fn start() -> Option<Instant> {
    CHILD.get().is_none_or(|child| child.timed_part).then(Instant::now)
}

/// A workload the instruction counts cover, with its size.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    size: usize,
    sides: &'static [Side],
}

impl Workload {
    fn label(&self) -> String {
        match self.name {
            "join" => format!("join-to-readable, N = {}", self.size),
            "build" => format!("bundle build, K = {}", self.size),
            "import" => format!("bundle import, K = {}", self.size),
            _ => format!("send latency, {} state events", self.size),
        }
    }
}

/// Sizes small enough for callgrind (about 50 times slower than the machine) and large enough
/// that per-item work dominates.
const COUNTED: &[Workload] = &[
    Workload { name: "join", size: 1_000, sides: &[Side::Ours, Side::Stock, Side::Primitives] },
    Workload { name: "build", size: 1_000, sides: &[Side::Ours, Side::Stock] },
    Workload { name: "import", size: 1_000, sides: &[Side::Ours, Side::Stock] },
    // Stock's send is small next to its setup: enough sends that the difference stands out of
    // the setup's own variation (a few million instructions of polling and timers).
    Workload { name: "send", size: 200, sides: &[Side::Ours, Side::Stock] },
];

const QUICK_COUNTED: &[Workload] = &[
    Workload { name: "join", size: 10, sides: &[Side::Ours, Side::Stock, Side::Primitives] },
    Workload { name: "build", size: 10, sides: &[Side::Ours, Side::Stock] },
    Workload { name: "import", size: 10, sides: &[Side::Ours, Side::Stock] },
    Workload { name: "send", size: 2, sides: &[Side::Ours, Side::Stock] },
];

/// The instructions of one workload's timed part, per side.
#[derive(Debug)]
pub(crate) struct InstructionRow {
    pub(crate) workload: String,
    pub(crate) ours: u64,
    pub(crate) stock: u64,
    pub(crate) primitives: Option<u64>,
}

/// `--instructions-child WORKLOAD SIZE SIDE timed|setup`: runs one side of one workload once.
pub(crate) async fn child(args: &[String]) -> Result<()> {
    let [workload, size, side, part] = args else {
        bail!("--instructions-child WORKLOAD SIZE SIDE timed|setup");
    };
    let size: usize = size.parse()?;
    let timed_part = match part.as_str() {
        "timed" => true,
        "setup" => false,
        _ => bail!("the part is timed or setup, not {part}"),
    };
    CHILD
        .set(Child { side: Side::parse(side)?, timed_part })
        .map_err(|_| anyhow::anyhow!("child set twice"))?;
    let plan = Plan { warmup: 0, repetitions: 1, ..crate::QUICK };
    match workload.as_str() {
        "join" => drop(crate::workloads::join_to_readable(size, plan).await?),
        "build" => drop(crate::workloads::bundle_build(size, plan).await?),
        "import" => drop(crate::workloads::bundle_import(size, plan).await?),
        "send" => drop(crate::send::send_latency(size, Duration::ZERO, plan).await?),
        _ => bail!("unknown workload {workload}"),
    }
    Ok(())
}

/// Counts every workload of [`COUNTED`] under callgrind. With `quick`, runs each child once
/// natively at a tiny size instead (so the child mode keeps working) and counts nothing.
pub(crate) async fn count(quick: bool) -> Result<Vec<InstructionRow>> {
    let exe = std::env::current_exe()?;
    let workloads = if quick { QUICK_COUNTED } else { COUNTED };
    let mut rows = Vec::new();
    for workload in workloads {
        let mut counts = Vec::new();
        for &side in workload.sides {
            let exe = exe.clone();
            let workload = *workload;
            let count = tokio::task::spawn_blocking(move || -> Result<u64> {
                // The two runs of a side at once: callgrind runs a process on one core.
                let timed = std::thread::spawn({
                    let exe = exe.clone();
                    move || run_child(&exe, workload, side, "timed", quick)
                });
                let setup = run_child(&exe, workload, side, "setup", quick)?;
                let timed =
                    timed.join().map_err(|_| anyhow::anyhow!("the counting thread panicked"))??;
                Ok(timed.saturating_sub(setup))
            })
            .await??;
            counts.push((side, count));
        }
        let of = |side| counts.iter().find(|(s, _)| *s == side).map(|(_, c)| *c);
        rows.push(InstructionRow {
            workload: workload.label(),
            ours: of(Side::Ours).unwrap_or(0),
            stock: of(Side::Stock).unwrap_or(0),
            primitives: of(Side::Primitives),
        });
    }
    Ok(if quick { Vec::new() } else { rows })
}

/// Runs one child; under callgrind unless `native`, returning the instructions it executed
/// (0 when native).
fn run_child(exe: &Path, workload: Workload, side: Side, part: &str, native: bool) -> Result<u64> {
    let args = [
        "--instructions-child".to_owned(),
        workload.name.to_owned(),
        workload.size.to_string(),
        side.name().to_owned(),
        part.to_owned(),
    ];
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("callgrind.out");
    let mut command = if native {
        let mut command = Command::new(exe);
        command.args(&args);
        command
    } else {
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(exe)
            .args(&args);
        command
    };
    let output = command.env_remove("RUST_LOG").output().with_context(|| {
        format!("running {} (install valgrind: cargo xtask bench does)", command_name(native))
    })?;
    ensure!(
        output.status.success(),
        "{} {} {} {part} failed: {}",
        workload.name,
        workload.size,
        side.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    if native {
        return Ok(0);
    }
    total(&std::fs::read_to_string(&out)?)
}

fn command_name(native: bool) -> &'static str {
    if native { "the bench binary" } else { "valgrind" }
}

/// The instructions a callgrind output file counts for the whole process (its `totals:` line,
/// or `summary:` in older formats).
fn total(callgrind_out: &str) -> Result<u64> {
    callgrind_out
        .lines()
        .find_map(|line| line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:")))
        .and_then(|value| value.split_whitespace().next())
        .context("no totals in the callgrind output")?
        .parse()
        .context("the callgrind totals are not a number")
}

#[cfg(test)]
mod tests {
    use super::total;

    #[test]
    fn the_totals_line_is_read() {
        let out = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 12345\n\nfn=(1) main\n1 5\ntotals: 12346\n";
        assert_eq!(total(out).unwrap(), 12345);
        assert!(total("events: Ir\n").is_err());
    }
}
