//! `cargo xtask bench`: each workload on our path and on the stock matrix-sdk 0.18 path, in the
//! same process, alternating, after a warm-up; prints medians, min/max and ours/stock ratios, and
//! with `--write` puts the table and a scaling plot in `docs/`.
//!
//! `--quick` runs every workload once at a tiny size (what `cargo xtask test` does, so this code
//! cannot rot); the numbers are then meaningless.

mod fixtures;
mod report;
mod sync;
mod workloads;

use std::time::Duration;

use anyhow::Result;

use crate::report::{Measurement, Report};

/// How a run is sized.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Untimed runs of each side before measuring.
    warmup: usize,
    /// Timed runs of each side.
    repetitions: usize,
    /// Join-to-readable sizes compared with stock.
    join_sizes: &'static [usize],
    /// Join-to-readable sizes of the scaling series (ours only).
    scaling_sizes: &'static [usize],
    /// Bundle sizes (sessions).
    bundle_sizes: &'static [usize],
    /// Syncs per sync-overhead run.
    syncs: usize,
}

const FULL: Plan = Plan {
    warmup: 1,
    repetitions: 5,
    join_sizes: &[1_000, 5_000],
    scaling_sizes: &[100, 1_000, 5_000, 20_000],
    bundle_sizes: &[1_000, 10_000],
    syncs: 50,
};

const QUICK: Plan = Plan {
    warmup: 0,
    repetitions: 1,
    join_sizes: &[10],
    scaling_sizes: &[5, 10],
    bundle_sizes: &[10],
    syncs: 2,
};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let write = args.iter().any(|a| a == "--write");
    let plan = if quick { QUICK } else { FULL };

    let mut report = Report::default();
    for &n in plan.join_sizes {
        let measured = workloads::join_to_readable(n, plan).await?;
        report.push(measured);
    }
    for &k in plan.bundle_sizes {
        report.push(workloads::bundle_build(k, plan).await?);
        report.push(workloads::bundle_import(k, plan).await?);
    }
    let (wall, cpu) = sync::sync_overhead(plan.syncs, plan).await?;
    report.push(wall);
    report.push(cpu);
    let mut scaling = Vec::new();
    for &n in plan.scaling_sizes {
        scaling.push((n, workloads::join_to_readable_ours(n, plan).await?));
    }
    let table = report.markdown();
    println!("{table}");
    println!("{}", report::scaling_markdown(&scaling));
    if write {
        report::write_docs(&table, &scaling)?;
        println!("wrote docs/benchmarks.md and docs/benchmarks-scaling.svg");
    }
    Ok(())
}

/// Runs `ours` and `stock` alternately: `plan.warmup` untimed rounds, then
/// `plan.repetitions` timed ones. Each closure builds its own fixture state (untimed) and
/// returns the time of the measured part.
pub(crate) async fn alternate<O, S, FO, FS>(
    plan: Plan,
    mut ours: O,
    mut stock: S,
) -> Result<(Measurement, Measurement)>
where
    O: FnMut() -> FO,
    S: FnMut() -> FS,
    FO: Future<Output = Result<Duration>>,
    FS: Future<Output = Result<Duration>>,
{
    for _ in 0..plan.warmup {
        ours().await?;
        stock().await?;
    }
    let (mut o, mut s) = (Vec::new(), Vec::new());
    for _ in 0..plan.repetitions {
        o.push(ours().await?);
        s.push(stock().await?);
    }
    Ok((Measurement::new(o), Measurement::new(s)))
}
