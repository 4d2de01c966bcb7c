//! `weft stop`, `weft start`, `weft restart` and `weft inspect`: the
//! lifecycle of this node's standalone tasks (those of `weft run`).

use clap::Subcommand;
use weft_proto::v1 as pb;

use super::{Client, rpc};

/// Parses `-t SECONDS`: a whole number of seconds, 0..=3600.
pub fn parse_stop_seconds(s: &str) -> Result<u64, String> {
    let max = weft_manager::validate::MAX_STOP_GRACE_MS / 1000;
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("expected a whole number of seconds, 0 to {max}; got {s:?}"))
}

/// The lifecycle commands (flattened into the top level).
#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// Stop running standalone tasks of this node gracefully: their stop
    /// signal, then SIGKILL after the grace period. They stay listed as
    /// exited (`weft ps -a`) until `weft start` or `weft rm`. Tasks of
    /// services are refused (use `weft service scale`).
    Stop {
        /// Grace period in seconds before SIGKILL (default: the task's
        /// --stop-grace-period, 10 s unless set).
        #[arg(short = 't', long = "time", alias = "timeout", value_name = "SECONDS",
              value_parser = parse_stop_seconds)]
        time: Option<u64>,
        /// Task names or IDs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Start stopped or exited standalone tasks of this node again: the
    /// same spec and addresses, a new container and a new log.
    Start {
        /// Task names or IDs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Stop (gracefully) and start standalone tasks of this node again.
    Restart {
        /// Grace period in seconds before SIGKILL (default: the task's own).
        #[arg(short = 't', long = "time", alias = "timeout", value_name = "SECONDS",
              value_parser = parse_stop_seconds)]
        time: Option<u64>,
        /// Task names or IDs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Print a task of this node as JSON, in the shape of
    /// `docker container inspect` where it applies, with weft's own fields
    /// under "Weft".
    Inspect {
        /// json (the default) or a Go template applied to each, e.g.
        /// '{{.State.Status}}' or '{{json .NetworkSettings}}'.
        #[arg(short, long, value_name = "FORMAT")]
        format: Option<String>,
        /// Task names or IDs.
        #[arg(required = true)]
        tasks: Vec<String>,
    },
}

impl LifecycleCommand {
    /// The command's name, for "needs the local daemon" errors.
    pub fn name(&self) -> &'static str {
        match self {
            LifecycleCommand::Stop { .. } => "stop",
            LifecycleCommand::Start { .. } => "start",
            LifecycleCommand::Restart { .. } => "restart",
            LifecycleCommand::Inspect { .. } => "inspect",
        }
    }
}

/// Runs a lifecycle command.
pub async fn lifecycle(c: &Client, cmd: LifecycleCommand) -> anyhow::Result<()> {
    match cmd {
        LifecycleCommand::Stop { time, tasks } => each(tasks, |t| stop(c, t, time)).await,
        LifecycleCommand::Start { tasks } => each(tasks, |t| start(c, t)).await,
        LifecycleCommand::Restart { time, tasks } => {
            each(tasks, |t| async move {
                stop(c, t.clone(), time).await?;
                start(c, t).await
            })
            .await
        }
        LifecycleCommand::Inspect { format, tasks } => {
            crate::format::Output::parse(format.as_deref())?;
            let mut out = Vec::new();
            for t in tasks {
                let r = c
                    .daemon()
                    .inspect(pb::InspectRequest { task: t.clone() })
                    .await
                    .map_err(rpc)
                    .map_err(|e| e.context(format!("inspecting {t}")))?
                    .into_inner();
                out.push(super::inspect::docker_shape(&r));
            }
            crate::format::print_objects(&out, format.as_deref())?;
            Ok(())
        }
    }
}

/// Runs `f` for each task, printing each name once done, as Docker does;
/// goes on after a failure and fails at the end if any did.
async fn each<F, Fut>(tasks: Vec<String>, f: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut failed = 0;
    for t in tasks {
        match f(t.clone()).await {
            Ok(()) => println!("{t}"),
            Err(e) => {
                eprintln!("error: {t}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} task(s) failed");
    }
    Ok(())
}

async fn stop(c: &Client, task: String, time: Option<u64>) -> anyhow::Result<()> {
    c.daemon()
        .stop(pb::StopRequest {
            task,
            grace_ms: time.map(|s| s * 1000),
        })
        .await
        .map_err(rpc)?;
    Ok(())
}

async fn start(c: &Client, task: String) -> anyhow::Result<()> {
    let r = c
        .daemon()
        .start(pb::StartRequest { task })
        .await
        .map_err(rpc)?
        .into_inner();
    if let Some(s) = r.status
        && s.state() == pb::TaskState::Failed
    {
        anyhow::bail!("it could not start: {}", s.message);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_seconds_are_bounded_whole_numbers() {
        assert_eq!(parse_stop_seconds("0"), Ok(0));
        assert_eq!(parse_stop_seconds("30"), Ok(30));
        assert_eq!(parse_stop_seconds("3600"), Ok(3600));
        for bad in ["", "-1", "1.5", "10s", "3601", "abc"] {
            assert!(parse_stop_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
