//! Benchmark (ignored; `bash bench/idle.sh` runs it in release): what an
//! idle node costs per task (issue #16), weft against Docker in the same run.
//!
//! weft: a lab of a manager (m) and a worker (w), a service of
//! `WEFT_BENCH_IDLE_TASKS` (250) idle replicas (`sleep`, host-process
//! tasks, each in its own network namespace on an overlay with the
//! service's VIP) on w. Docker: one dockerd (Debian's docker.io, with the
//! containerd it starts) in a namespace host of its own, the same number of
//! idle busybox containers (`sleep`) on its default bridge.
//!
//! The cost is the CPU time (user + system, children included: a process
//! a daemon starts and reaps counts toward it) of every process whose
//! network namespace is the node's host namespace, over
//! `WEFT_BENCH_IDLE_WINDOW` seconds (20), `WEFT_BENCH_IDLE_ROUNDS` windows
//! (3), after the tasks settled (two 10 s windows in a row within 2 % of
//! a core of each other; the start burst's passes go on for a while after
//! the last task runs): for weft the worker daemon and whatever it
//! starts; for Docker dockerd, its containerd and the shims. The tasks
//! themselves (in namespaces of their own) count on neither side.
//!
//! Then, on the weft worker with all its tasks, three changes, each
//! followed by the worker's data plane passes, timed from its debug log
//! (`converge pass` plane_ms): one more replica (every task's VIP table),
//! a one-replica service on a network of its own (a new namespace), and a
//! service without replicas on that network, which touches that one
//! namespace's VIP table: the figure of "a change that touches one task
//! namespace".

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::bench::{env_num, median, write_fragment};
use common::swarm::Swarm;
use common::{Lab, wait_for};

const IMAGE: &str = "weft-test/busybox:latest";

/// (pid, start time) → CPU ticks (utime + stime + cutime + cstime) of every
/// process in the network namespace whose inode is `ns_inode`.
fn cpu_ticks_in(ns_inode: u64) -> BTreeMap<(u32, u64), (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if link.to_string_lossy() != format!("net:[{ns_inode}]") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) in parentheses.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head
            .split_once('(')
            .map(|(_, c)| c)
            .unwrap_or("?")
            .to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): utime is field 14, starttime 22.
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(
            (pid, num(22)),
            (comm, num(14) + num(15) + num(16) + num(17)),
        );
    }
    out
}

fn ns_inode(pin: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(pin).expect("netns pin").ino()
}

/// Percent of one core spent by the processes of the namespace over one
/// window, for each of `rounds` windows of `window`.
fn measure(pin: &Path, rounds: u64, window: Duration) -> Vec<f64> {
    let ino = ns_inode(pin);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (0..rounds)
        .map(|_| {
            let before = cpu_ticks_in(ino);
            let t = Instant::now();
            std::thread::sleep(window);
            let after = cpu_ticks_in(ino);
            let secs = t.elapsed().as_secs_f64();
            let mut by_comm: BTreeMap<&str, u64> = BTreeMap::new();
            for (k, (comm, v)) in &after {
                if let Some((_, b)) = before.get(k) {
                    *by_comm.entry(comm).or_default() += v.saturating_sub(*b);
                }
            }
            let ticks: u64 = by_comm.values().sum();
            let mut top: Vec<_> = by_comm.into_iter().filter(|(_, t)| *t > 0).collect();
            top.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
            eprintln!("window: {ticks} ticks in {secs:.1}s; by process: {top:?}");
            100.0 * ticks as f64 / hz / secs
        })
        .collect()
}

/// Waits until the CPU of everything in the namespace pinned at `pin` has
/// settled: two 10 s windows in a row within 2 % of a core of each other,
/// at most 300 s. Returns how long that took and the
/// windows seen.
fn settle(pin: &Path) -> (Duration, Vec<f64>) {
    let t = Instant::now();
    let mut seen: Vec<f64> = Vec::new();
    while t.elapsed() < Duration::from_secs(300) {
        let w = measure(pin, 1, Duration::from_secs(10))[0];
        let steady = seen.last().is_some_and(|p| (w - p).abs() <= 2.0);
        seen.push(w);
        if steady {
            break;
        }
    }
    (t.elapsed(), seen)
}

/// The `plane_ms` of every `converge pass` line of a daemon log (its
/// colours stripped).
fn plane_ms(log: &str) -> Vec<u64> {
    let plain = common::strip_ansi(log);
    plain
        .lines()
        .filter(|l| l.contains("converge pass"))
        .filter_map(|l| {
            let i = l.find("plane_ms=")? + "plane_ms=".len();
            l[i..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Creates service NAME of REPLICAS idle replicas (`sleep`) on NETWORK, on
/// the worker.
fn sleeping_service(lab: &Lab, name: &str, replicas: u64, network: &str) {
    let n = replicas.to_string();
    lab.weft(
        "m",
        &[
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            &n,
            "--network",
            network,
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "1000000",
        ],
    );
}

/// What the weft side measured: the worker's and the manager's CPU
/// windows, and the worker's data plane passes after each change.
struct WeftSide {
    worker: Vec<f64>,
    manager: Vec<f64>,
    scale: Vec<u64>,
    solo: Vec<u64>,
    touch: Vec<u64>,
}

fn weft_side(tasks: u64, rounds: u64, window: Duration) -> WeftSide {
    let mut lab = Lab::new("bench-idle", &["m", "w"]);
    // WEFT_BENCH_IDLE_LOG: the daemons' log filter (the passes are read
    // from the worker's `converge pass` lines, so keep those), e.g.
    // `info,weft_worker::reconcile=trace,weft_overlay::linux::dataplane=trace`
    // to time each data plane op.
    let filter = std::env::var("WEFT_BENCH_IDLE_LOG")
        .unwrap_or_else(|_| "info,weft_worker::reconcile=trace".to_string());
    lab.set_daemon_env("WEFT_LOG", &filter);
    lab.start_all();
    let (wt, _) = lab.init("m", &[]);
    lab.join("w", &wt, "m");
    lab.weft(
        "m",
        &["network", "create", "--subnet", "10.0.0.0/20", "appnet"],
    );
    sleeping_service(&lab, "idle", tasks, "appnet");
    let t = Instant::now();
    wait_for("every replica running", Duration::from_secs(600), || {
        lab.running_on("m", "idle").len() as u64 == tasks
    });
    eprintln!("weft: {tasks} tasks running after {:?}", t.elapsed());
    // The passes and reports of the start burst go on after the last task
    // runs: wait until the worker's CPU is steady.
    let (took, seen) = settle(&lab.host_netns("w"));
    eprintln!("weft: settled {took:?} after the last task ran; 10 s windows: {seen:.1?}");
    let worker = measure(&lab.host_netns("w"), rounds, window);
    let manager = measure(&lab.host_netns("m"), 1, window);

    // Three changes, each followed by the worker's passes (from its log):
    // one more replica (every task's VIP table gets the new backend); a
    // one-replica service on a network of its own (one new task namespace,
    // nothing else touched); a service without replicas on that network
    // (its VIP goes into that one namespace's VIP table, nothing else).
    let log = lab.host_dir("w").join("daemon.log");
    let passes_after = |change: &dyn Fn(), done: &dyn Fn() -> bool| -> Vec<u64> {
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        change();
        let t = Instant::now();
        while !done() {
            if t.elapsed() > Duration::from_secs(300) {
                let text = std::fs::read(&log).unwrap_or_default();
                let text = String::from_utf8_lossy(&text);
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                let ps = lab.weft("m", &["service", "ps", "idle"]);
                let stuck: Vec<&str> = ps.lines().filter(|l| !l.contains(" running ")).collect();
                panic!(
                    "the change is not running after 300 s\nnot running: {stuck:#?}\nw's log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let text = std::fs::read(&log).unwrap_or_default();
        plane_ms(&String::from_utf8_lossy(
            text.get(from..).unwrap_or_default(),
        ))
    };
    let scale = passes_after(
        &|| {
            lab.weft("m", &["service", "scale", &format!("idle={}", tasks + 1)]);
        },
        &|| lab.running_on("m", "idle").len() as u64 == tasks + 1,
    );
    let solo = passes_after(
        &|| {
            lab.weft(
                "m",
                &["network", "create", "--subnet", "10.1.0.0/24", "solonet"],
            );
            sleeping_service(&lab, "solo", 1, "solonet");
        },
        &|| lab.running_on("m", "solo").len() == 1,
    );
    let touch = passes_after(
        &|| {
            sleeping_service(&lab, "touch", 0, "solonet");
        },
        &|| true,
    );
    if let Some(dir) = std::env::var_os("WEFT_BENCH_KEEP_LOGS") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(&log, std::path::Path::new(&dir).join("w-daemon.log"));
    }
    WeftSide {
        worker,
        manager,
        scale,
        solo,
        touch,
    }
}

fn docker_side(tasks: u64, rounds: u64, window: Duration) -> Vec<f64> {
    let swarm = Swarm::start(&format!("wbidle-{}", std::process::id()), &["d"]);
    let images = common::image::busybox();
    swarm.docker("d", &["load", "-q", "-i", images.docker.to_str().unwrap()]);
    let t = Instant::now();
    // A few at a time, as the weft side's worker starts them.
    std::thread::scope(|s| {
        for k in 0..4 {
            let swarm = &swarm;
            s.spawn(move || {
                let mut i = k;
                while i < tasks {
                    swarm.docker("d", &["run", "-d", IMAGE, "sleep", "1000000"]);
                    i += 4;
                }
            });
        }
    });
    wait_for("every container running", Duration::from_secs(120), || {
        swarm.docker("d", &["ps", "-q"]).lines().count() as u64 == tasks
    });
    eprintln!("docker: {tasks} containers running after {:?}", t.elapsed());
    let (took, seen) = settle(&swarm.host_netns("d"));
    eprintln!("docker: settled {took:?} after the last container ran; 10 s windows: {seen:.1?}");
    measure(&swarm.host_netns("d"), rounds, window)
}

#[test]
#[ignore = "benchmark: bash bench/idle.sh"]
fn idle_cost_per_task_against_docker() {
    let tasks = env_num("WEFT_BENCH_IDLE_TASKS", 250);
    let rounds = env_num("WEFT_BENCH_IDLE_ROUNDS", 3);
    let window = Duration::from_secs(env_num("WEFT_BENCH_IDLE_WINDOW", 20));
    let WeftSide {
        worker: weft,
        manager,
        scale,
        solo,
        touch,
    } = weft_side(tasks, rounds, window);
    let docker = if std::env::var("BENCH_DOCKER").as_deref() == Ok("0") {
        Vec::new()
    } else {
        docker_side(tasks, rounds, window)
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (w, d) = (median(&weft), median(&docker));
    let md = format!(
        "| {tasks} idle tasks, % of one core | median | every window ({}s) |\n|---|---:|---|\n\
         | weft worker (daemon and children) | {w:.2} | {} |\n\
         | Docker (dockerd, containerd, shims) | {d:.2} | {} |\n\
         | weft manager (1 window) | {:.2} | |\n\n\
         weft / Docker: {:.2}; target ≤ 2 % of one core: {}.\n\n\
         The worker's data plane passes (ms) after a change, with {tasks} tasks on it: \
         one more replica (every task's VIP table gets a backend) {scale:?}; \
         a one-replica service on a network of its own (one new task namespace) {solo:?}; \
         a service without replicas on that network (one namespace's VIP table) {touch:?}.\n",
        window.as_secs(),
        fmt(&weft),
        fmt(&docker),
        median(&manager),
        w / d,
        common::bench::met(w <= 2.0),
    );
    write_fragment("idle.md", &md);
}
