//! Benchmarks of the CNI plugin (issue #15), each against weft's own task
//! measured in the same run on the same lab:
//!
//! - `cni_attach`: from the start of a CNI ADD (the plugin as a runtime
//!   runs it) to the container answering TCP from a task on another host,
//!   against `weft run -d --network` of a task to the same answer;
//! - `cni_throughput`: iperf3 from a task on another host to a CNI
//!   container, against the same to a weft task on the container's host
//!   (the same path, so the target is ≥ 0.95×);
//! - `podman and docker run on weft`: `podman run` (CNI plugin) and `docker
//!   run` (network plugin) to the container answering from another host,
//!   against `docker run` on a Docker Swarm attachable overlay, and iperf3
//!   to a Docker container on weft against a weft task (≥ 0.95×).
//!
//! Run with `cargo test --release --test bench_cni -- --ignored
//! --test-threads=1 --nocapture`; knobs: `WEFT_BENCH_LAT_ROUNDS` (attach
//! rounds, 5), `WEFT_BENCH_ROUNDS` (throughput rounds, 3),
//! `WEFT_BENCH_SECS` (iperf3 seconds, 10). Results go to `WEFT_BENCH_OUT`
//! as `cni.md`.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bench::{
    Procs, env_num, fmt_s, iperf3, iperf3_server, median, met, ns_ok, write_fragment,
};
use common::vip_probe::in_netns;
use common::{Lab, WEFT, sleeper, wait_for};
use weft_overlay::linux::Netns;

/// The port the probed servers listen on.
const PORT: u16 = 8080;

/// Connects to `ip:PORT` from the namespace at `pin` every 5 ms until it
/// answers; the time from `t0`.
fn first_answer(pin: &Path, ip: Ipv4Addr, t0: Instant) -> Duration {
    in_netns(pin, move || {
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let addr = std::net::SocketAddr::from((ip, PORT));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
                return t0.elapsed();
            }
            assert!(Instant::now() < deadline, "{ip} never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .join()
    .expect("probe")
}

/// An httpd on PORT in the namespace at `pin` (it may listen before the
/// namespace has any address).
fn httpd(procs: &mut Procs, pin: &Path, site: &Path) {
    procs.0.push(
        Command::new("nsenter")
            .arg(format!("--net={}", pin.display()))
            .args(["busybox", "httpd", "-f", "-p", &PORT.to_string(), "-h"])
            .arg(site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("httpd"),
    );
}

/// A CNI call as a runtime makes it; stdout as JSON.
fn cni(lab: &Lab, cmd: &str, id: &str, ns: &Path) -> serde_json::Value {
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "appnet", "type": "weft",
                                  "network": "appnet", "socket": lab.socket_path("h1")});
    let mut child = Command::new(WEFT)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("plugin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CNI {cmd}: {text}");
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).expect("json")
    }
}

/// A container namespace, unpinned on drop.
struct Ctr(PathBuf);

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.0);
    }
}

fn ctr(lab: &Lab, name: &str) -> Ctr {
    let pin = lab.dir().join("containers").join(name);
    Netns::create(&pin).expect("namespace");
    ns_ok(&pin, &["ip", "link", "set", "lo", "up"]);
    Ctr(pin)
}

fn ip_of(pin: &Path) -> Option<Ipv4Addr> {
    let out = common::nsenter_stdout(pin, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    common::addr_of_in(&out)?.split('/').next()?.parse().ok()
}

/// iperf3 servers in the namespaces of a task and of a container, then
/// `rounds` single-stream runs of `secs` from `probe` to each, alternating;
/// Gbit/s to the task, to the container.
fn alternate_iperf(
    procs: &mut Procs,
    probe: &Path,
    task: (&Path, &str),
    ctr: (&Path, &str),
    (rounds, secs): (usize, u64),
) -> (Vec<f64>, Vec<f64>) {
    iperf3_server(procs, task.0);
    iperf3_server(procs, ctr.0);
    let (mut to_task, mut to_ctr) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        to_task.push(iperf3(probe, task.1, 1, secs).gbps);
        to_ctr.push(iperf3(probe, ctr.1, 1, secs).gbps);
        eprintln!(
            "round {r}: to a task {:.2} Gbit/s, to a container {:.2} Gbit/s",
            to_task[r], to_ctr[r]
        );
    }
    (to_task, to_ctr)
}

#[test]
#[ignore = "benchmark: run with --ignored (bench/cni.sh)"]
fn cni_attach_and_throughput() {
    let rounds = env_num("WEFT_BENCH_LAT_ROUNDS", 5) as usize;
    let t_rounds = env_num("WEFT_BENCH_ROUNDS", 3) as usize;
    let secs = env_num("WEFT_BENCH_SECS", 10);
    let mut lab = Lab::new("bench-cni", &["h1", "h2"]);
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.attachable_network("h1", "10.77.0.0/24", "appnet");
    let probe = sleeper(&lab, "h2", "probe", "appnet");
    let site = lab.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "ok\n").unwrap();
    let mut procs = Procs::default();

    // --- attach: task vs CNI container, alternating.
    let (mut task_s, mut cni_s) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let t0 = Instant::now();
        let id = lab
            .weft(
                "h1",
                &[
                    "run",
                    "-d",
                    "--network",
                    "appnet",
                    "--",
                    "sh",
                    "-c",
                    "mkdir -p /tmp/www; echo ok > /tmp/www/index.html; \
                     exec busybox httpd -f -p 8080 -h /tmp/www",
                ],
            )
            .trim()
            .to_owned();
        let pin = lab.task_netns("h1", &id);
        let mut ip = None;
        wait_for("the task's address", Duration::from_secs(60), || {
            ip = ip_of(&pin);
            ip.is_some()
        });
        task_s.push(first_answer(&probe, ip.unwrap(), t0).as_secs_f64());
        lab.weft("h1", &["rm", "-f", &id]);

        let c = ctr(&lab, &format!("c{r}"));
        httpd(&mut procs, &c.0, &site);
        let t0 = Instant::now();
        let res = cni(&lab, "ADD", &format!("bench{r}"), &c.0);
        let addr = res["ips"][0]["address"].as_str().expect("address");
        let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
        cni_s.push(first_answer(&probe, ip, t0).as_secs_f64());
        cni(&lab, "DEL", &format!("bench{r}"), &c.0);
        eprintln!(
            "round {r}: task {:.3} s, CNI container {:.3} s",
            task_s[r], cni_s[r]
        );
    }

    // --- throughput: to a task and to a CNI container on h1, from h2.
    let srv_task = sleeper(&lab, "h1", "srv", "appnet");
    let srv_ctr = ctr(&lab, "srv-ctr");
    let res = cni(&lab, "ADD", "srv", &srv_ctr.0);
    let ctr_ip = res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let task_ip = ip_of(&srv_task).expect("task address").to_string();
    let (to_task, to_ctr) = alternate_iperf(
        &mut procs,
        &probe,
        (&srv_task, &task_ip),
        (&srv_ctr.0, &ctr_ip),
        (t_rounds, secs),
    );
    drop(procs);

    let (ta, ca) = (median(&task_s), median(&cni_s));
    let (tt, ct) = (median(&to_task), median(&to_ctr));
    let tput_ratio = ct / tt;
    let md = format!(
        "\n### A CNI container against a weft task\n\n\
         | what | weft task | CNI container | ratio | target |\n|---|---|---|---|---|\n\
         | attach → answering TCP from another host (median of {rounds}) | {} | {} | {:.2}× | — |\n\
         | TCP throughput from another host, 1 stream, {secs} s (median of {t_rounds}) | {tt:.2} Gbit/s | {ct:.2} Gbit/s | {tput_ratio:.2}× | ≥ 0.95× {} |\n",
        fmt_s(ta),
        fmt_s(ca),
        ca / ta,
        met(tput_ratio >= 0.95),
    );
    eprintln!("{md}");
    write_fragment("cni.md", &md);
}

/// The image both runtimes run.
const IMAGE: &str = "weft-test/busybox:latest";
/// What the measured containers run: an HTTP server on PORT.
const SERVE: &str = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www";

/// `podman run -d` of a server on a weft overlay on h1 → it answers TCP
/// from a task on h2, `rounds` times; seconds.
fn podman_rounds(rounds: usize) -> Vec<f64> {
    let mut lab = Lab::new("bench-cni-podman", &["h1", "h2"]);
    lab.private_run();
    lab.start_all();
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.attachable_network("h1", "10.77.0.0/24", "appnet");
    // The task's pin is a mount in h2's daemon's mount namespace.
    let probe = PathBuf::from(format!(
        "/proc/{}/root{}",
        lab.pid("h2").expect("h2 runs"),
        sleeper(&lab, "h2", "probe", "appnet").display()
    ));
    let podman = common::podman::Podman::new(&lab, "h1", "appnet");
    let format = "{{.NetworkSettings.Networks.appnet.IPAddress}}";
    (0..rounds)
        .map(|r| {
            let name = format!("p{r}");
            let t0 = Instant::now();
            podman.run_d(&name, "appnet", &["sh", "-c", SERVE]);
            let ip = podman.ok(&["inspect", "-f", format, &name]);
            let took = first_answer(&probe, ip.trim().parse().expect("an IPv4 address"), t0);
            podman.ok(&["rm", "-f", "-t", "0", &name]);
            eprintln!("podman round {r}: {:.3} s", took.as_secs_f64());
            took.as_secs_f64()
        })
        .collect()
}

/// The same with Docker Swarm: `docker run -d --network` on an attachable
/// Swarm overlay on s1 → it answers TCP from a container on s2.
fn swarm_rounds(rounds: usize) -> Vec<f64> {
    use common::swarm::Swarm;
    let mut swarm = Swarm::start(&format!("wbcni-{}", std::process::id()), &["s1", "s2"]);
    swarm.form();
    let images = common::image::busybox();
    for h in ["s1", "s2"] {
        swarm.docker(h, &["load", "-q", "-i", images.docker.to_str().unwrap()]);
    }
    swarm.docker(
        "s1",
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "--subnet",
            "10.78.0.0/24",
            "appnet",
        ],
    );
    swarm.docker(
        "s2",
        &[
            "run",
            "-d",
            "--name",
            "probe",
            "--network",
            "appnet",
            IMAGE,
            "sleep",
            "36000",
        ],
    );
    let probe = swarm.container_netns("s2", "probe");
    let format = "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}";
    (0..rounds)
        .map(|r| {
            let name = format!("d{r}");
            let t0 = Instant::now();
            swarm.docker(
                "s1",
                &[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    "appnet",
                    IMAGE,
                    "sh",
                    "-c",
                    SERVE,
                ],
            );
            let ip = swarm.docker("s1", &["inspect", "-f", format, &name]);
            let took = first_answer(&probe, ip.trim().parse().expect("an IPv4 address"), t0);
            swarm.docker("s1", &["rm", "-f", &name]);
            eprintln!("swarm round {r}: {:.3} s", took.as_secs_f64());
            took.as_secs_f64()
        })
        .collect()
}

/// `docker run -d --network` (Docker's dockerd with weft's network plugin)
/// of a server on a weft overlay on h1 → it answers TCP from a task on h2,
/// `rounds` times (seconds); then iperf3 from that task to a Docker
/// container and to a weft task on h1, `t_rounds` times each, alternating
/// (Gbit/s: to tasks, to containers).
fn docker_rounds(rounds: usize, t_rounds: usize, secs: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    use common::dockerd::{Dockerd, PLUGIN_SOCKET};
    let mut lab = Lab::new("bench-cni-docker", &["h1", "h2"]);
    lab.private_run();
    for h in ["h1", "h2"] {
        lab.start_with(h, &["--docker-plugin", PLUGIN_SOCKET]);
    }
    let (worker, _) = lab.init("h1", &[]);
    lab.join("h2", &worker, "h1");
    lab.attachable_network("h1", "10.77.0.0/24", "appnet");
    let in_daemon = |host: &str, pin: PathBuf| {
        PathBuf::from(format!(
            "/proc/{}/root{}",
            lab.pid(host).expect("runs"),
            pin.display()
        ))
    };
    let probe = in_daemon("h2", sleeper(&lab, "h2", "probe", "appnet"));
    let docker = Dockerd::start(&lab, "h1");
    docker.weft_network("appnet", "appnet");
    let format = "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}";
    let run: Vec<f64> = (0..rounds)
        .map(|r| {
            let name = format!("d{r}");
            let t0 = Instant::now();
            docker.run_d(&name, &["--network", "appnet"], &["sh", "-c", SERVE]);
            let ip = docker.ok(&["inspect", "-f", format, &name]);
            let took = first_answer(&probe, ip.trim().parse().expect("an IPv4 address"), t0);
            docker.ok(&["rm", "-f", &name]);
            eprintln!("docker on weft round {r}: {:.3} s", took.as_secs_f64());
            took.as_secs_f64()
        })
        .collect();

    let srv_task = in_daemon("h1", sleeper(&lab, "h1", "srv", "appnet"));
    docker.run_d("dsrv", &["--network", "appnet"], &["sleep", "36000"]);
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", "dsrv"]);
    let srv_ctr = PathBuf::from(format!("/proc/{}/ns/net", pid.trim()));
    let ctr_ip = docker
        .ok(&["inspect", "-f", format, "dsrv"])
        .trim()
        .to_owned();
    let task_ip = ip_of(&srv_task).expect("task address").to_string();
    let mut procs = Procs::default();
    let (to_task, to_ctr) = alternate_iperf(
        &mut procs,
        &probe,
        (&srv_task, &task_ip),
        (&srv_ctr, &ctr_ip),
        (t_rounds, secs),
    );
    drop(procs);
    (run, to_task, to_ctr)
}

#[test]
#[ignore = "benchmark: run with --ignored (bench/cni.sh)"]
fn podman_and_docker_run_on_weft_against_docker_run_on_swarm() {
    let rounds = env_num("WEFT_BENCH_LAT_ROUNDS", 5) as usize;
    let t_rounds = env_num("WEFT_BENCH_ROUNDS", 3) as usize;
    let secs = env_num("WEFT_BENCH_SECS", 10);
    let weft = podman_rounds(rounds);
    let (dock, to_task, to_ctr) = docker_rounds(rounds, t_rounds, secs);
    let swarm = swarm_rounds(rounds);
    let (w, d, s) = (median(&weft), median(&dock), median(&swarm));
    let every = |v: &[f64]| v.iter().map(|x| fmt_s(*x)).collect::<Vec<_>>().join(", ");
    let (tt, ct) = (median(&to_task), median(&to_ctr));
    let md = format!(
        "\n### podman and docker on weft against docker on Docker Swarm\n\n\
         | run → answering TCP from another host (median of {rounds}) | seconds (each round) | \
         against Swarm |\n|---|---|---|\n\
         | podman on weft (CNI plugin) | {} ({}) | {:.2}× |\n\
         | docker on weft (network plugin) | {} ({}) | {:.2}× |\n\
         | docker on a Swarm attachable overlay ({}) | {} ({}) | 1× |\n\n\
         | TCP throughput from a task on another host, 1 stream, {secs} s (median of {t_rounds}) | \
         weft task | Docker container (weft plugin) | ratio | target |\n|---|---|---|---|---|\n\
         | Gbit/s | {tt:.2} | {ct:.2} | {:.2}× | ≥ 0.95× {} |\n",
        fmt_s(w),
        every(&weft),
        w / s,
        fmt_s(d),
        every(&dock),
        d / s,
        common::swarm::Swarm::version(),
        fmt_s(s),
        every(&swarm),
        ct / tt,
        met(ct / tt >= 0.95),
    );
    write_fragment("cni-swarm.md", &md);
}
