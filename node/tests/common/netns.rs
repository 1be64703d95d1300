//! Network namespaces joined by veth pairs, for tests that put faults *between* hosts: each node runs
//! in a namespace of its own (`ip netns exec`), the links between them can be made lossy and slow
//! (`tc … netem`), cut (`ip link set … down`) or black-holed (100 % loss), and healed.
//!
//! The test process reaches every namespace through a management veth of its own, which no fault
//! touches: what is tested is the nodes' links to each other, not the test's view of them.
//!
//! Everything a [`Lab`] creates carries the test's pid in its name (`srf-<pid>-<host>` namespaces,
//! `srf<pid><h>` root-side veths) and is removed when the `Lab` is dropped, also when the test
//! panics. What a killed test run left behind (its pid is gone) is removed by the next `Lab`.
//!
//! Included by tests with `#[path = "common/netns.rs"] mod netns;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name prefix of everything a `Lab` creates.
const PREFIX: &str = "srf";

/// How link faults are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTool {
    /// `tc qdisc … netem loss P% delay Dms` (kernel `sch_netem`): loss and delay.
    Netem,
    /// nftables `numgen random mod 100 < P drop` on the link's output: loss only, no delay. For
    /// kernels without `sch_netem`; chosen explicitly with `SYNCRELAY_NETNS_FAULTS=nft`.
    Nft,
}

impl FaultTool {
    /// From `SYNCRELAY_NETNS_FAULTS` (`netem`, the default, or `nft`).
    pub fn from_env() -> Result<FaultTool, String> {
        match std::env::var("SYNCRELAY_NETNS_FAULTS").as_deref() {
            Err(_) | Ok("") | Ok("netem") => Ok(FaultTool::Netem),
            Ok("nft") => Ok(FaultTool::Nft),
            Ok(other) => Err(format!(
                "SYNCRELAY_NETNS_FAULTS={other}: expected `netem` or `nft`"
            )),
        }
    }
}

/// Runs a command; its stdout, or an error naming the command with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `program args` inside namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Removes a probe namespace when dropped.
struct Probe(String);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// Whether this machine can run a `Lab` with `tool`: root, `ip`/`tc` (or `nft`), network namespaces,
/// veth pairs, and the fault mechanism itself, each tried for real in a throw-away namespace.
pub fn check_requirements(tool: FaultTool) -> Result<(), String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Err(format!(
                "not root (euid {uid}): namespaces and tc need root"
            ))
        }
        None => return Err("cannot read the effective uid from /proc/self/status".into()),
    }
    run("ip", &["-V"]).map_err(|e| format!("iproute2 `ip` is missing: {e}"))?;
    match tool {
        FaultTool::Netem => {
            run("tc", &["-V"]).map_err(|e| format!("iproute2 `tc` is missing: {e}"))?
        }
        FaultTool::Nft => {
            run("nft", &["--version"]).map_err(|e| format!("`nft` is missing: {e}"))?
        }
    };
    let probe = Probe(format!("{PREFIX}-{}-probe", std::process::id()));
    run("ip", &["netns", "add", &probe.0])
        .map_err(|e| format!("cannot create a network namespace: {e}"))?;
    run(
        "ip",
        &[
            "-n", &probe.0, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
        ],
    )
    .map_err(|e| format!("cannot create a veth pair: {e}"))?;
    match tool {
        FaultTool::Netem => {
            run_in(
                &probe.0,
                "tc",
                &[
                    "qdisc", "add", "dev", "pa", "root", "netem", "loss", "30%", "delay", "50ms",
                ],
            )
            .map_err(|e| {
                format!(
                    "sch_netem is not usable here ({e}); the kernel needs CONFIG_NET_SCH_NETEM \
                     (as a module: `modprobe sch_netem`). On a kernel without it, \
                     SYNCRELAY_NETNS_FAULTS=nft injects the loss with nftables instead (no delay)"
                )
            })?;
        }
        FaultTool::Nft => {
            nft_drop(&probe.0, "pa", 30)
                .map_err(|e| format!("nftables cannot drop packets here: {e}"))?;
        }
    }
    Ok(())
}

/// Installs (or replaces) a rule dropping `percent` % of what namespace `ns` sends out of `dev`.
fn nft_drop(ns: &str, dev: &str, percent: u32) -> Result<(), String> {
    let chain = format!("out_{dev}");
    run_in(ns, "nft", &["add", "table", "inet", "srfault"])?;
    run_in(
        ns,
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "srfault",
            &chain,
            "{ type filter hook output priority 0 ; policy accept ; }",
        ],
    )?;
    run_in(ns, "nft", &["flush", "chain", "inet", "srfault", &chain])?;
    let percent = percent.to_string();
    let mut rule = vec!["add", "rule", "inet", "srfault", &chain, "oifname", dev];
    if percent != "100" {
        rule.extend_from_slice(&["numgen", "random", "mod", "100", "<", &percent]);
    }
    rule.push("drop");
    run_in(ns, "nft", &rule)?;
    Ok(())
}

/// Whether process `pid` still exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name made by a `Lab` (`srf-<pid>-host` or `srf<pid><h>`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Names of the network namespaces.
pub fn namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Names of the links in the root namespace.
pub fn root_links() -> Vec<String> {
    run("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// SIGKILLs every process in namespace `ns`, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Removes what earlier, killed test runs left behind (their pid no longer exists).
fn remove_stale() {
    for ns in namespaces() {
        if owner_pid(&ns).is_some_and(|pid| !alive(pid)) {
            eprintln!("netns: removing stale namespace {ns}");
            remove_namespace(&ns);
        }
    }
    for link in root_links() {
        if owner_pid(&link).is_some_and(|pid| !alive(pid)) {
            eprintln!("netns: removing stale link {link}");
            let _ = run("ip", &["link", "del", &link]);
        }
    }
}

/// A second octet `a` for 10.a.0.0/16 that no address or route of the root namespace uses.
fn free_octet() -> u8 {
    let used = format!(
        "{}\n{}",
        run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default(),
        run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default()
    );
    let start = 20 + std::process::id() % 200;
    (0..200)
        .map(|k| ((start + k) % 200 + 20) as u8)
        .find(|a| !used.contains(&format!("10.{a}.")))
        .expect("a free 10.x.0.0/16 range")
}

/// A host: one namespace, reachable from the test at `mgmt_ip`.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub mgmt_ip: String,
}

/// One end of a link between two hosts.
#[derive(Debug, Clone)]
pub struct End {
    pub ns: String,
    pub dev: String,
    pub ip: String,
}

/// The two ends of a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub a: End,
    pub b: End,
}

/// A process started in a namespace, with its stderr in a file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Network namespaces, veths and processes, all removed when dropped.
pub struct Lab {
    pub tool: FaultTool,
    /// 10.`octet`.0.0/16 holds every address of this lab.
    pub octet: u8,
    pid: u32,
    hosts: Vec<Host>,
    root_ends: Vec<String>,
    procs: Vec<Proc>,
    links: u8,
    cleaned: bool,
}

impl Lab {
    pub fn new(tool: FaultTool) -> Lab {
        remove_stale();
        Lab {
            tool,
            octet: free_octet(),
            pid: std::process::id(),
            hosts: Vec::new(),
            root_ends: Vec::new(),
            procs: Vec::new(),
            links: 0,
            cleaned: false,
        }
    }

    /// A namespace with loopback up and a management veth to the root namespace
    /// (10.o.(100+k).1 on the root side, 10.o.(100+k).2 inside).
    pub fn host(&mut self, name: &str) -> Host {
        let k = self.hosts.len();
        let ns = format!("{PREFIX}-{}-{name}", self.pid);
        let root_end = format!("{PREFIX}{}{}", self.pid, &name[..1]);
        assert!(root_end.len() <= 15, "interface name too long: {root_end}");
        // Registered before creation: a half-made host is removed too.
        self.hosts.push(Host {
            name: name.into(),
            ns: ns.clone(),
            mgmt_ip: format!("10.{}.{}.2", self.octet, 100 + k),
        });
        self.root_ends.push(root_end.clone());
        let net = format!("10.{}.{}", self.octet, 100 + k);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns", "add", &ns],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec![
                "link", "add", &root_end, "type", "veth", "peer", "name", "mgmt", "netns", &ns,
            ],
            vec!["addr", "add", &format!("{net}.1/24"), "dev", &root_end],
            vec!["link", "set", &root_end, "up"],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "mgmt",
            ],
            vec!["-n", &ns, "link", "set", "mgmt", "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run("ip", &args).unwrap_or_else(|e| panic!("setting up host {name}: {e}"));
        }
        self.hosts.last().unwrap().clone()
    }

    /// A veth pair between two hosts on 10.o.n.0/24 (n counts links from 1): `a` gets .1, `b` .2.
    /// Each end is named after the host it leads to (`to<host>`).
    pub fn link(&mut self, a: &Host, b: &Host) -> Link {
        self.links += 1;
        let net = format!("10.{}.{}", self.octet, self.links);
        let a_end = End {
            ns: a.ns.clone(),
            dev: format!("to{}", b.name),
            ip: format!("{net}.1"),
        };
        let b_end = End {
            ns: b.ns.clone(),
            dev: format!("to{}", a.name),
            ip: format!("{net}.2"),
        };
        let add = [
            "link", "add", &a_end.dev, "netns", &a.ns, "type", "veth", "peer", "name", &b_end.dev,
            "netns", &b.ns,
        ];
        run("ip", &add).unwrap_or_else(|e| panic!("linking {} and {}: {e}", a.name, b.name));
        for end in [&a_end, &b_end] {
            run(
                "ip",
                &[
                    "-n",
                    &end.ns,
                    "addr",
                    "add",
                    &format!("{}/24", end.ip),
                    "dev",
                    &end.dev,
                ],
            )
            .unwrap();
            run("ip", &["-n", &end.ns, "link", "set", &end.dev, "up"]).unwrap();
        }
        Link { a: a_end, b: b_end }
    }

    /// Starts `program args` in `host`'s namespace (stderr to `log`), and waits up to 60 s for the
    /// stdout line starting with `ready_prefix`; returns the rest of that line.
    pub fn spawn(
        &mut self,
        host: &Host,
        program: &str,
        args: &[&str],
        log: &Path,
        ready_prefix: &str,
    ) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.ns, program])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {}: {e}", host.ns));
        let stdout = child.stdout.take().unwrap();
        // `ip netns exec` execs the program: the child's pid is the program's.
        self.procs.push(Proc {
            name: host.name.clone(),
            child,
            log: log.to_path_buf(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = ready_prefix.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} did not report {ready_prefix:?}", host.name))
    }

    /// Makes what `end` sends lossy (and, with netem, slow); replaces an earlier fault on it.
    pub fn degrade(&self, end: &End, loss_percent: u32, delay_ms: u32) {
        match self.tool {
            FaultTool::Netem => {
                let loss = format!("{loss_percent}%");
                let delay = format!("{delay_ms}ms");
                run_in(
                    &end.ns,
                    "tc",
                    &[
                        "qdisc", "replace", "dev", &end.dev, "root", "netem", "loss", &loss,
                        "delay", &delay,
                    ],
                )
                .unwrap();
            }
            FaultTool::Nft => nft_drop(&end.ns, &end.dev, loss_percent).unwrap(),
        }
    }

    /// Removes the loss/delay fault from `end`.
    pub fn clear(&self, end: &End) {
        match self.tool {
            FaultTool::Netem => {
                // Fails harmlessly when there is no qdisc to delete.
                let _ = run_in(&end.ns, "tc", &["qdisc", "del", "dev", &end.dev, "root"]);
            }
            FaultTool::Nft => {
                let chain = format!("out_{}", end.dev);
                let _ = run_in(
                    &end.ns,
                    "nft",
                    &["flush", "chain", "inet", "srfault", &chain],
                );
            }
        }
    }

    /// Both directions of `link` lossy (and slow).
    pub fn degrade_link(&self, link: &Link, loss_percent: u32, delay_ms: u32) {
        self.degrade(&link.a, loss_percent, delay_ms);
        self.degrade(&link.b, loss_percent, delay_ms);
    }

    /// Every packet on `link` dropped, in both directions (a silent partition: connections hang).
    pub fn blackhole(&self, link: &Link) {
        self.degrade_link(link, 100, 0);
    }

    /// `link`'s `a` end set down (the peer loses carrier; connecting fails at once).
    pub fn cut(&self, link: &Link) {
        run(
            "ip",
            &["-n", &link.a.ns, "link", "set", &link.a.dev, "down"],
        )
        .unwrap();
    }

    /// Undoes every fault on `link`: both ends up, no loss, no delay.
    pub fn heal(&self, link: &Link) {
        for end in [&link.a, &link.b] {
            self.clear(end);
            run("ip", &["-n", &end.ns, "link", "set", &end.dev, "up"]).unwrap();
        }
    }

    /// Stops the processes and removes the namespaces and veths; returns what is still there.
    pub fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return self.leftovers();
        }
        self.cleaned = true;
        let panicking = std::thread::panicking();
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if panicking {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                eprintln!("--- last lines of {}'s log:\n{}", p.name, tail.join("\n"));
            }
        }
        for host in &self.hosts {
            remove_namespace(&host.ns);
        }
        for end in &self.root_ends {
            if root_links().contains(end) {
                let _ = run("ip", &["link", "del", end]);
            }
        }
        // The kernel dismantles a deleted namespace (and the veths in it) asynchronously.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Namespaces and root-side veths of this lab that exist.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = namespaces()
            .into_iter()
            .filter(|ns| self.hosts.iter().any(|h| &h.ns == ns))
            .collect();
        left.extend(
            root_links()
                .into_iter()
                .filter(|l| self.root_ends.contains(l)),
        );
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let left = self.cleanup();
        if !left.is_empty() {
            eprintln!("netns: could not remove {left:?}");
        }
    }
}
