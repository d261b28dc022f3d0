//! `cargo xtask bench`: each workload on our path and on the stock matrix-sdk 0.18 path, in the
//! same process, alternating, after a warm-up; prints medians, min/max and ours/stock ratios, and
//! with `--write` puts the table and a scaling plot in `docs/`.
//!
//! `--quick` runs every workload once at a tiny size (what `cargo xtask test` does, so this code
//! cannot rot); the numbers are then meaningless.

mod fixtures;
mod flood;
mod instructions;
mod memory;
mod report;
mod send;
mod sync;
mod workloads;

use std::time::Duration;

use anyhow::Result;

use crate::{
    instructions::Side,
    report::{Measurement, Report},
};

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
    /// State events sent per send-latency round.
    sends: usize,
    /// How long the in-process homeserver takes to answer each send: zero (the floor, every
    /// microsecond ours adds shows) and a homeserver's typical time to store an event.
    send_server_delays: &'static [Duration],
    /// Junk encrypted state events in the flood.
    flood_events: usize,
}

const FULL: Plan = Plan {
    warmup: 1,
    repetitions: 5,
    join_sizes: &[1_000, 5_000],
    scaling_sizes: &[100, 1_000, 5_000, 20_000],
    bundle_sizes: &[1_000, 10_000],
    syncs: 50,
    sends: 50,
    send_server_delays: &[Duration::ZERO, Duration::from_millis(10)],
    flood_events: 10_000,
};

const QUICK: Plan = Plan {
    warmup: 0,
    repetitions: 1,
    join_sizes: &[10],
    scaling_sizes: &[5, 10],
    bundle_sizes: &[10],
    syncs: 2,
    sends: 2,
    send_server_delays: &[Duration::ZERO, Duration::from_millis(1)],
    flood_events: 20,
};

#[tokio::main]
async fn main() -> Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--instructions-child") {
        return instructions::child(&args[1..]).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let write = args.iter().any(|a| a == "--write");
    // `--only GROUP[,GROUP..]`: join, bundle, send, sync, flood, scaling, instructions (all by
    // default).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|groups| groups.split(',').map(str::to_owned).collect());
    let runs = |group: &str| only.as_ref().is_none_or(|groups| groups.iter().any(|g| g == group));
    let plan = if quick { QUICK } else { FULL };

    let mut report = Report::default();
    if runs("join") {
        for &n in plan.join_sizes {
            report.push(workloads::join_to_readable(n, plan).await?);
        }
    }
    if runs("bundle") {
        for &k in plan.bundle_sizes {
            report.push(workloads::bundle_build(k, plan).await?);
            let (import, memory) = workloads::bundle_import(k, plan).await?;
            report.push(import);
            report.push_memory(memory);
        }
    }
    if runs("send") {
        for delay in plan.send_server_delays {
            report.push(send::send_latency(plan.sends, *delay, plan).await?);
        }
    }
    if runs("sync") {
        let (wall, cpu) = sync::sync_overhead(plan.syncs, plan).await?;
        report.push(wall);
        report.push(cpu);
    }
    if runs("flood") {
        let (flood, memory) = flood::flood(plan.flood_events, plan).await?;
        report.push_flood(flood);
        report.push_memory(memory);
    }
    if runs("instructions") {
        for row in instructions::count(quick).await? {
            report.push_instructions(row);
        }
    }
    let mut scaling = Vec::new();
    if runs("scaling") {
        for &n in plan.scaling_sizes {
            scaling.push((n, workloads::join_to_readable_ours(n, plan).await?));
        }
    }
    let table = report.markdown();
    let sections = report.sections();
    println!("{table}\n{sections}");
    println!("{}", report::scaling_markdown(&scaling));
    if write {
        anyhow::ensure!(only.is_none(), "--write needs every workload (no --only)");
        report::write_docs(&table, &sections, &scaling)?;
        println!("wrote docs/benchmarks.md and docs/benchmarks-scaling.svg");
    }
    Ok(())
}

/// Runs `ours` and `stock` alternately: `plan.warmup` untimed rounds, then
/// `plan.repetitions` timed ones, each side first in every other round (only the side an
/// instruction-counting child runs, if this is one). Each closure builds its own fixture state
/// (untimed) and returns the time of the measured part.
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
    let (run_ours, run_stock) = (instructions::runs(Side::Ours), instructions::runs(Side::Stock));
    for _ in 0..plan.warmup {
        if run_ours {
            ours().await?;
        }
        if run_stock {
            stock().await?;
        }
    }
    let (mut o, mut s) = (Vec::new(), Vec::new());
    for round in 0..plan.repetitions {
        // Each side goes first in every other round: the first of a pair pays for what the
        // process has not warmed yet (fresh heap pages from the kernel, cold caches).
        if round % 2 == 1 && run_stock {
            s.push(stock().await?);
        }
        if run_ours {
            o.push(ours().await?);
        }
        if round % 2 == 0 && run_stock {
            s.push(stock().await?);
        }
    }
    Ok((Measurement::new(o), Measurement::new(s)))
}
