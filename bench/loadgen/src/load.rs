//! The measurement loop: N clients, each with one request in flight,
//! for warm-up + duration. A request counts if it was sent after the
//! warm-up and answered before the end, so the count covers exactly the
//! measured window.

use std::time::Duration;

use tokio::time::Instant;

use crate::Target;
use crate::report::{Record, summarize};
use crate::targets::Writer;

/// How a run is shaped (see `LoadArgs`).
#[derive(Debug, Clone)]
pub struct Shape {
    /// Concurrent clients.
    pub clients: usize,
    /// Shared HTTP/2 connections.
    pub channels: usize,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Leader only or all members.
    pub target: Target,
    /// Wait for a leader up to this long before starting.
    pub ready_timeout: Duration,
    /// Round number, for the record.
    pub round: u32,
    /// Distinct keys; client i writes key i mod `keys`.
    pub keys: usize,
}

/// What one client saw in the measured window.
#[derive(Default)]
struct ClientOutcome {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `writers` (one per client) and summarizes the measured window.
pub async fn run(system: &str, shape: &Shape, writers: Vec<Writer>) -> Record {
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let end = measure_from + shape.duration;
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut out = ClientOutcome::default();
                let mut seq = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    seq += 1;
                    let res = w.write(seq).await;
                    let t1 = Instant::now();
                    if t0 < measure_from || t1 > end {
                        continue;
                    }
                    match res {
                        Ok(()) => out
                            .latencies_us
                            .push((t1 - t0).as_micros().try_into().unwrap_or(u64::MAX)),
                        Err(status) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| status.to_string());
                            // Do not spin on a failing cluster.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        match t.await {
            Ok(o) => {
                latencies.extend(o.latencies_us);
                errors += o.errors;
                first_error = first_error.or(o.first_error);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("client task failed: {e}"));
            }
        }
    }
    summarize(system, shape, latencies, errors, first_error)
}
