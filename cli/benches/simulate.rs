//! How long `ragpool simulate` takes over a day of traffic at 10 tasks/s (864 000 tasks), per
//! policy. Run with `cargo bench -p ragpool-cli --bench simulate`; the best of three rounds is
//! reported, as wall time of a single thread (the simulation uses one).

use std::path::Path;
use std::time::{Duration, Instant};

use ragpool_cli::simulate::rng::Rng;
use ragpool_cli::simulate::service::ServiceTime;
use ragpool_cli::simulate::{Scenario, load_pool, trace};

fn best_of(rounds: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut out = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        out = std::hint::black_box(f());
        best = best.min(start.elapsed());
    }
    (best, out)
}

fn main() -> anyhow::Result<()> {
    let pool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/traces/pool.yaml");
    let spec = load_pool(&pool, &[])?;
    let text = "0,86400,864000\n";
    let (took, n) = best_of(3, || {
        trace::parse(text, &mut Rng::new(1, 1)).map_or(0, |a| a.len())
    });
    println!("trace of a day at 10 tasks/s ({n} tasks): {took:.2?}");
    let arrivals = trace::parse(text, &mut Rng::new(1, 1))?;
    let scenario = Scenario::new(
        spec,
        &arrivals,
        &ServiceTime::Exponential { mean: 3.0 },
        10.0,
        1,
    );
    let (took, events) = best_of(3, || scenario.ragpool().scale_events.len());
    println!("ragpool policy: {took:.2?} ({events} scale events)");
    let (took, events) = best_of(3, || scenario.keda().scale_events.len());
    println!("keda baseline: {took:.2?} ({events} scale events)");
    Ok(())
}
