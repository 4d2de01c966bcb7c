//! weft-bench: the load generator behind `make bench`.
//!
//! Drives N concurrent clients for a fixed time (after a warm-up) against
//! either a weft manager group (`Control.UpdateNode` label writes: each one
//! is a committed Raft write, fsync'd on a majority) or an etcd cluster
//! (`etcdserverpb.KV/Put` over plain gRPC), and prints one JSON line per run:
//! writes/s, p50/p99 commit latency, count and errors. `report` folds the
//! JSON lines of several rounds into the Markdown table of BENCHMARKS.md.
//!
//! Both systems get the same client shape: `--channels` HTTP/2 connections
//! shared round-robin by the clients, each client one request at a time.
//!
//! Owns: load generation and result formatting. Must not: start or stop the
//! systems under test (bench/run.sh does).

mod load;
mod report;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The same allocator as the `weft` binary, so the load generator takes as
/// little of the shared CPUs as it can, for both systems alike.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line of the load generator.
#[derive(Parser)]
#[command(name = "weft-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Label writes (`Control.UpdateNode`) against a weft manager group.
    Weft {
        /// Manager addresses, IP:PORT, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<String>,
        /// A manager's certificate directory: ca.pem, node.pem, node-key.pem.
        #[arg(long)]
        certs: PathBuf,
        /// `read` issues `Control.GetNode` instead: a linearizable read
        /// (a read index from the leader, no Raft write); system `weft-read`.
        #[arg(long, value_enum, default_value_t = Op::Write)]
        op: Op,
        /// Label of the result line for writes (`weft` by default;
        /// `weft-redb` for the group whose Raft log is in redb, the log
        /// backend A/B of bench/run.sh).
        #[arg(long, default_value = "weft")]
        system: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// `KV/Put` against an etcd cluster (plain gRPC).
    Etcd {
        /// Client endpoints, IP:PORT, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// `read` issues a linearizable `KV/Range` of the key instead
        /// (etcd's default read: a ReadIndex); system `etcd-read`.
        #[arg(long, value_enum, default_value_t = Op::Write)]
        op: Op,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// fdatasync latency of a small overwrite in DIR (what one durable log
    /// write costs on that disk); prints `p50_us p99_us`.
    FsyncProbe {
        /// Directory on the disk to probe; a scratch file is created and removed.
        dir: PathBuf,
        /// Writes to time.
        #[arg(long, default_value_t = 500)]
        count: usize,
    },
    /// Medians over rounds of JSON result lines, as a Markdown section.
    Report {
        /// File of JSON lines written by `weft` and `etcd` runs.
        results: PathBuf,
        /// Replace the control-plane section of this Markdown file (created
        /// if missing; other sections are kept). Without it, print.
        #[arg(long)]
        into: Option<PathBuf>,
        /// Free text describing the machine and the run, put under the title.
        #[arg(long, default_value = "")]
        machine: String,
    },
}

/// Load shape shared by both systems.
#[derive(Args, Clone, Debug)]
struct LoadArgs {
    /// Concurrent clients; each has one request in flight at a time.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// HTTP/2 connections shared by the clients (never more than clients).
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Where the connections go.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    target: Target,
    /// Seconds to wait for the cluster to have a leader that takes writes.
    #[arg(long, default_value_t = 30.0)]
    ready_timeout: f64,
    /// Round number, copied into the result line.
    #[arg(long, default_value_t = 0)]
    round: u32,
    /// Distinct keys written (client i writes key i mod N); 0 means one
    /// key per client. For weft the keys are labels of one node, which
    /// every write copies whole, so fewer keys mean cheaper writes.
    #[arg(long, default_value_t = 0)]
    keys: usize,
}

/// What each request does.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A committed write: `Control.UpdateNode` adding a label, `KV.Put`.
    Write,
    /// A linearizable read of the same: `Control.GetNode` (a read index
    /// from the leader), `KV.Range` (etcd's ReadIndex).
    Read,
}

/// Which members the clients talk to.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every connection to the current leader.
    Leader,
    /// Connections spread over all members (followers forward to the leader).
    All,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Leader => "leader",
            Target::All => "all",
        })
    }
}

impl LoadArgs {
    fn shape(&self) -> Result<load::Shape> {
        anyhow::ensure!(self.clients > 0, "--clients must be at least 1");
        anyhow::ensure!(self.channels > 0, "--channels must be at least 1");
        anyhow::ensure!(
            self.warmup >= 0.0 && self.duration > 0.0,
            "--warmup must be >= 0 and --duration > 0"
        );
        Ok(load::Shape {
            clients: self.clients,
            channels: self.channels.min(self.clients),
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            target: self.target,
            ready_timeout: Duration::from_secs_f64(self.ready_timeout),
            round: self.round,
            keys: if self.keys == 0 {
                self.clients
            } else {
                self.keys
            },
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    weft_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Weft {
            addrs,
            certs,
            op,
            system,
            load,
        } => {
            let shape = load.shape()?;
            let writers = targets::weft(&addrs, &certs, &shape, op).await?;
            let system = match op {
                Op::Write => system.as_str(),
                Op::Read => "weft-read",
            };
            print_record(&load::run(system, &shape, writers).await)
        }
        Cmd::Etcd {
            endpoints,
            op,
            load,
        } => {
            let shape = load.shape()?;
            let writers = targets::etcd(&endpoints, &shape, op).await?;
            let system = match op {
                Op::Write => "etcd",
                Op::Read => "etcd-read",
            };
            print_record(&load::run(system, &shape, writers).await)
        }
        Cmd::FsyncProbe { dir, count } => {
            let (p50, p99) = fsync_probe(&dir, count.max(1))?;
            println!("{p50} {p99}");
            Ok(())
        }
        Cmd::Report {
            results,
            into,
            machine,
        } => {
            let text = std::fs::read_to_string(&results)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", results.display()))?;
            let records = report::parse(&text)?;
            let section = report::markdown(&records, &machine);
            match into {
                Some(path) => report::write_section(&path, &section),
                None => {
                    print!("{section}");
                    Ok(())
                }
            }
        }
    }
}

/// Times `count` 4 KiB overwrites at offset 0 of a preallocated file, each
/// followed by `fdatasync`, and returns (p50, p99) in µs.
fn fsync_probe(dir: &std::path::Path, count: usize) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    // Preallocate and persist, so the timed writes are pure data overwrites.
    for _ in 0..16 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let mut us = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = std::time::Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        us.push(t0.elapsed().as_micros() as u64);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    us.sort_unstable();
    let at = |p: usize| us[(us.len() * p).div_ceil(100).clamp(1, us.len()) - 1];
    Ok((at(50), at(99)))
}

fn print_record(r: &report::Record) -> Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}
