//! Limits on a sample as a whole: a memory cgroup bounds the memory of all its
//! processes together (an rlimit bounds each process alone), and a pids cgroup
//! their number. Each sample gets cgroups of its own, made under this
//! process's cgroup (cgroup v2, else the v1 hierarchies), and removed after it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Age after which an empty cgroup of a process that is gone is removed.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// A directory under which this process may make cgroups with a controller.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    pub parent: PathBuf,
    pub v2: bool,
}

/// Where the sample's cgroups go, for each controller that is usable.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub memory: Option<Place>,
    pub pids: Option<Place>,
}

impl Plan {
    /// Finds the hierarchies of this process that it may make cgroups in.
    pub fn detect() -> Plan {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let plan = Plan::for_process(&mounts, &own);
        for place in plan.memory.iter().chain(&plan.pids) {
            remove_stale(&place.parent);
        }
        plan
    }

    /// The plan for a process with these mounts and `/proc/self/cgroup`.
    fn for_process(mounts: &str, own: &str) -> Plan {
        let memory = place_for("memory", mounts, own);
        let mut pids = place_for("pids", mounts, own);
        // A process is in one v2 cgroup: both controllers must be that one's.
        if let (Some(m), Some(p)) = (&memory, &pids) {
            if m.v2 && p.v2 && m.parent != p.parent {
                pids = lists(&m.parent.join("cgroup.subtree_control"), "pids").then(|| m.clone());
            }
        }
        Plan { memory, pids }
    }
}

/// The v2 place for `controller` if the unified hierarchy offers it, else the
/// v1 hierarchy's; either only if a cgroup can be made there.
fn place_for(controller: &str, mountinfo: &str, own: &str) -> Option<Place> {
    v2_candidates(controller, mountinfo, own)
        .into_iter()
        .map(|parent| Place { parent, v2: true })
        .chain(v1_dir(controller, mountinfo, own).map(|parent| Place { parent, v2: false }))
        .find(|p| can_make_cgroup(&p.parent))
}

/// One mount of /proc/self/mountinfo: its root, mount point, type and the
/// filesystem's options.
struct Mount<'a> {
    root: String,
    point: String,
    fstype: &'a str,
    options: &'a str,
}

fn parse_mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        Some(Mount {
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
            fstype: after.next()?,
            options: after.nth(1)?,
        })
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The directory of cgroup `path` in a hierarchy mounted at `mount`.
fn dir_of(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path).strip_prefix(&mount.root).ok()?;
    Some(Path::new(&mount.point).join(relative))
}

/// In v2 a cgroup's children get a controller only if its
/// `cgroup.subtree_control` lists it, and a cgroup that holds processes (ours)
/// can list none unless it is the root: so this process's own cgroup, else its
/// parent (whose list has the controller when ours does).
fn v2_candidates(controller: &str, mountinfo: &str, own: &str) -> Vec<PathBuf> {
    let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let Some(mount) = parse_mounts(mountinfo).find(|m| m.fstype == "cgroup2") else {
        return Vec::new();
    };
    let Some(dir) = dir_of(&mount, path) else {
        return Vec::new();
    };
    let mut candidates = vec![dir.clone()];
    if let Some(parent) = dir.parent().filter(|p| p.starts_with(&mount.point)) {
        candidates.push(parent.to_path_buf());
    }
    candidates.retain(|d| lists(&d.join("cgroup.subtree_control"), controller));
    candidates
}

/// The v1 cgroup of this process in the hierarchy that has `controller`.
fn v1_dir(controller: &str, mountinfo: &str, own: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })?;
    let mount = parse_mounts(mountinfo)
        .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
    dir_of(&mount, path)
}

/// Removes the empty cgroups left by eval processes that were killed before
/// they could remove them: named after their process, which is gone, and
/// older than a sample takes to start (one that another PID namespace's eval
/// process is about to join is younger; one with processes is not removed).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix("grok1-sandbox-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_AFTER));
        if old && owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn lists(file: &Path, controller: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|s| s.split_whitespace().any(|c| c == controller))
}

fn can_make_cgroup(parent: &Path) -> bool {
    let probe = parent.join(format!("grok1-sandbox-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()
}

/// The cgroups of one sample; dropping them removes them.
#[derive(Debug)]
pub struct SampleCgroups {
    dirs: Vec<PathBuf>,
}

impl SampleCgroups {
    /// Makes the sample's cgroups: at most `memory` bytes (RAM and swap) and
    /// `processes` processes for all its processes together.
    pub fn create(plan: &Plan, memory: u64, processes: u64) -> Result<SampleCgroups, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "grok1-sandbox-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut made = SampleCgroups { dirs: Vec::new() };
        for (place, limits) in [
            (&plan.memory, memory_limits(plan.memory.as_ref(), memory)),
            (&plan.pids, vec![Limit::required("pids.max", processes)]),
        ] {
            let Some(place) = place else { continue };
            let dir = place.parent.join(&name);
            if !made.dirs.contains(&dir) {
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("making the cgroup {}: {e}", dir.display()))?;
                made.dirs.push(dir.clone());
            }
            for limit in limits {
                limit.write(&dir)?;
            }
        }
        Ok(made)
    }

    /// The cgroups the sample joins.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// A value for a cgroup's file; an optional one is skipped where the file
/// does not exist (swap limits, where swap is not accounted).
#[derive(Debug, PartialEq)]
struct Limit {
    file: &'static str,
    value: u64,
    optional: bool,
}

impl Limit {
    fn required(file: &'static str, value: u64) -> Limit {
        Limit {
            file,
            value,
            optional: false,
        }
    }

    fn optional(file: &'static str, value: u64) -> Limit {
        Limit {
            optional: true,
            ..Limit::required(file, value)
        }
    }

    fn write(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(self.file);
        if self.optional && !path.exists() {
            return Ok(());
        }
        std::fs::write(&path, self.value.to_string())
            .map_err(|e| format!("writing {} to {}: {e}", self.value, path.display()))
    }
}

fn memory_limits(place: Option<&Place>, memory: u64) -> Vec<Limit> {
    match place {
        Some(Place { v2: true, .. }) => vec![
            Limit::required("memory.max", memory),
            Limit::optional("memory.swap.max", 0),
        ],
        Some(Place { v2: false, .. }) => vec![
            Limit::required("memory.limit_in_bytes", memory),
            // RAM plus swap; set after the RAM limit, which it may not be below.
            Limit::optional("memory.memsw.limit_in_bytes", memory),
        ],
        None => Vec::new(),
    }
}

impl Drop for SampleCgroups {
    /// The sample's processes are gone once the helper has reaped its PID 1;
    /// should any remain (the helper died first), they are killed, so that the
    /// cgroup can be removed.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.kind() == ErrorKind::ResourceBusy && Instant::now() < deadline => {
                        kill_members(dir);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn kill_members(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Only Linux has cgroups: there are none to empty.
#[cfg(not(target_os = "linux"))]
fn kill_members(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 /outer /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/cpu\\040x rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "\
8:pids:/outer/job
4:memory:/process_api/47dc
2:cpu,cpuacct:/a
0::/sess
";

    #[test]
    fn v1_directories_follow_the_mount_root_and_point() {
        assert_eq!(
            v1_dir("memory", MOUNTINFO, OWN),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/47dc"))
        );
        assert_eq!(
            v1_dir("pids", MOUNTINFO, OWN),
            Some(PathBuf::from("/sys/fs/cgroup/pids/job"))
        );
        assert_eq!(
            v1_dir("cpuacct", MOUNTINFO, OWN),
            Some(PathBuf::from("/sys/fs/cgroup/cpu x/a"))
        );
        assert_eq!(v1_dir("blkio", MOUNTINFO, OWN), None);
    }

    #[test]
    fn v2_cgroups_go_where_the_controllers_are_delegated() {
        // Our cgroup /a/b holds processes, so its children get no
        // controllers; its parent /a hands memory and pids down.
        let fs = tempfile::tempdir().unwrap();
        let a = fs.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        std::fs::write(a.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        std::fs::write(a.join("b/cgroup.subtree_control"), "").unwrap();
        let mounts = format!(
            "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
            fs.path().display()
        );
        let plan = Plan::for_process(&mounts, "0::/a/b\n");
        let at_a = Place {
            parent: a.clone(),
            v2: true,
        };
        assert_eq!(plan.memory, Some(at_a.clone()));
        assert_eq!(plan.pids, Some(at_a));
        // Delegated to our own cgroup (the root cgroup, say): children of ours.
        std::fs::write(a.join("b/cgroup.subtree_control"), "memory\n").unwrap();
        let plan = Plan::for_process(&mounts, "0::/a/b\n");
        assert_eq!(plan.memory.map(|p| p.parent), Some(a.join("b")));
        // A process is in one v2 cgroup: pids goes with memory, or nowhere.
        assert_eq!(plan.pids, None);
        // Nothing delegated: no place.
        std::fs::write(a.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(a.join("b/cgroup.subtree_control"), "").unwrap();
        let plan = Plan::for_process(&mounts, "0::/a/b\n");
        assert_eq!((plan.memory, plan.pids), (None, None));
    }

    #[test]
    fn cgroups_of_eval_processes_that_are_gone_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let named = |pid: u32, n: u32| parent.path().join(format!("grok1-sandbox-{pid}-{n}"));
        let (gone, young, alive) = (
            named(u32::MAX, 3),
            named(u32::MAX, 4),
            named(std::process::id(), 3),
        );
        let other = parent.path().join("user.slice");
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for d in [&gone, &young, &alive, &other] {
            std::fs::create_dir(d).unwrap();
            if d != &young {
                let dir = std::fs::File::open(d).unwrap();
                dir.set_modified(an_hour_ago).unwrap();
            }
        }
        remove_stale(parent.path());
        assert!(!gone.exists());
        assert!(young.exists() && alive.exists() && other.exists());
    }
}
