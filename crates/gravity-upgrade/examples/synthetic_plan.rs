//! Builds upgrade plans for synthetic clusters and reports their size and
//! the build time: `cargo run --release -p gravity-upgrade --example
//! synthetic_plan -- 3 10000` (masters, workers).

use std::time::Instant;

use gravity_upgrade::{BuildOptions, synthetic_plan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (masters, workers) = match args.as_slice() {
        [m, w] => (*m, *w),
        [m] => (*m, 0),
        _ => (3, 1000),
    };
    let opts = BuildOptions::default().with_parallel_workers(10);
    let start = Instant::now();
    let plan = synthetic_plan(masters, workers, &opts)?;
    let built = start.elapsed();
    let start = Instant::now();
    let graph = plan.graph()?;
    let indexed = start.elapsed();
    println!(
        "{masters} masters + {workers} workers: {} phases, built in {built:?}, indexed in {indexed:?}",
        graph.len() - 1
    );
    Ok(())
}
