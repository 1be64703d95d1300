//! Holds processes to a fixed CPU share each, so that the nodes of a chain started on one machine
//! run as they would on machines of their own: every process gets its own cgroup with a CPU quota
//! (`cores` CPUs per 10 ms period). Without it, a chain of three busy processes on two cores
//! measures the sum of their CPU time rather than how well its hops pipeline.
//!
//! Needs a writable cgroup CPU controller (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), which
//! usually means root; [`CpuShares::apply`] says why when there is none. Dropping the value moves
//! the processes back to the hierarchy's root and removes the groups.

use std::fs;
use std::path::{Path, PathBuf};

const PERIOD_US: u64 = 10_000;

enum Hierarchy {
    /// cgroup v2: `cpu.max` is "quota period".
    Unified,
    /// cgroup v1 `cpu` controller: `cpu.cfs_period_us` and `cpu.cfs_quota_us`.
    Legacy,
}

pub struct CpuShares {
    root: PathBuf,
    groups: Vec<PathBuf>,
    pids: Vec<u32>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn find_hierarchy() -> Result<(PathBuf, Hierarchy), String> {
    let unified = Path::new("/sys/fs/cgroup");
    let controllers = fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        // Child groups get the cpu controller only when the root hands it down.
        write(&unified.join("cgroup.subtree_control"), "+cpu")?;
        return Ok((unified.to_path_buf(), Hierarchy::Unified));
    }
    let legacy = unified.join("cpu");
    if legacy.join("cpu.cfs_quota_us").exists() {
        return Ok((legacy, Hierarchy::Legacy));
    }
    Err("no cgroup cpu controller under /sys/fs/cgroup".into())
}

impl CpuShares {
    /// Puts each of `pids` (with all its threads) into a cgroup of its own limited to `cores` CPUs.
    pub fn apply(pids: &[u32], cores: f64) -> Result<Self, String> {
        let (root, hierarchy) = find_hierarchy()?;
        let quota = (cores * PERIOD_US as f64).round() as u64;
        let mut shares = CpuShares {
            root: root.clone(),
            groups: Vec::new(),
            pids: Vec::new(),
        };
        for (i, &pid) in pids.iter().enumerate() {
            let group = root.join(format!("syncrelay-bench-{}-{i}", std::process::id()));
            fs::create_dir(&group).map_err(|e| format!("creating {}: {e}", group.display()))?;
            shares.groups.push(group.clone());
            match hierarchy {
                Hierarchy::Unified => {
                    write(&group.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?
                }
                Hierarchy::Legacy => {
                    write(&group.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(&group.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            write(&group.join("cgroup.procs"), &pid.to_string())?;
            shares.pids.push(pid);
        }
        Ok(shares)
    }
}

impl Drop for CpuShares {
    fn drop(&mut self) {
        for pid in &self.pids {
            // A process that has exited has left its group already.
            let _ = fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        for group in &self.groups {
            if let Err(e) = fs::remove_dir(group) {
                eprintln!("could not remove {}: {e}", group.display());
            }
        }
    }
}
