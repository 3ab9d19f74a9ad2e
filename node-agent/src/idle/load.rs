//! Non-job load: `/proc/loadavg` minus the CPU that Lodger's own workloads use.
//!
//! The owner's compile or simulation makes a desktop busy even when nobody touches the keyboard;
//! Lodger's jobs must not count, or a node running a lodger would evict it for being busy. The
//! jobs' CPU comes from their cgroups' `cpu.stat` `usage_usec` (cgroup v2): the deltas between
//! samples give the cores they use, smoothed with the same one-minute exponential decay the
//! kernel applies to the 1-minute load average (as HTCondor derives `NonCondorLoadAvg`), so the
//! two are comparable. Which cgroups: the kubelet's pod cgroups of this node's Lodger workload
//! pods (found by pod UID under the cgroup root, for both the systemd and the cgroupfs driver),
//! or any cgroups matching a configured glob.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the load source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A file did not have the expected format.
    #[error("failed to parse {what}: {text:?}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The offending text (truncated).
        text: String,
    },
    /// The configured glob is invalid.
    #[error("failed to parse cgroup glob {pattern:?}: {source}")]
    Glob {
        /// The pattern.
        pattern: String,
        /// The parse error.
        #[source]
        source: glob::PatternError,
    },
}

impl LoadError {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "load_read",
            LoadError::Parse { .. } => "load_parse",
            LoadError::Glob { .. } => "load_glob",
        }
    }
}

fn parse_err(what: &'static str, text: &str) -> LoadError {
    LoadError::Parse {
        what,
        text: text.chars().take(80).collect(),
    }
}

/// The 1-minute load average, the first field of `/proc/loadavg`
/// (`0.42 0.35 0.30 2/611 12345`).
pub fn parse_loadavg(text: &str) -> Result<f64, LoadError> {
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| parse_err("/proc/loadavg", text))
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn parse_usage_usec(text: &str) -> Result<u64, LoadError> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| parse_err("cpu.stat usage_usec", text))
}

/// Which cgroups hold Lodger's workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobCgroups {
    /// Every directory matching this glob (e.g. `/sys/fs/cgroup/lodger/*`).
    Glob(String),
    /// The kubelet's pod cgroups of these pod UIDs, searched under this cgroup root.
    Pods {
        /// The cgroup v2 root (`/sys/fs/cgroup`).
        root: PathBuf,
        /// UIDs of this node's Lodger workload pods.
        uids: BTreeSet<String>,
    },
}

/// Finds the cgroup directories of pods with these UIDs: the kubelet names them
/// `kubepods-<qos>-pod<uid with _>.slice` (systemd driver) or `pod<uid>` (cgroupfs driver),
/// under a `kubepods*` directory at most three levels below `root`. Nested cgroups of one pod
/// are not returned twice (a pod's cgroup already includes its containers').
pub fn find_pod_cgroups(root: &Path, uids: &BTreeSet<String>) -> Vec<PathBuf> {
    if uids.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<(String, String)> = uids
        .iter()
        .map(|u| (format!("pod{u}"), format!("pod{}", u.replace('-', "_"))))
        .collect();
    let matches = |name: &str| {
        wanted.iter().any(|(plain, underscored)| {
            name == plain || name.ends_with(&format!("-{underscored}.slice"))
        })
    };
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("kubepods") && e.path().is_dir() {
                stack.push((e.path(), 1));
            }
        }
    }
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if matches(&e.file_name().to_string_lossy()) {
                found.push(path);
            } else if depth < 3 {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Resolves a [`JobCgroups`] to directories now.
pub fn resolve(cgroups: &JobCgroups) -> Result<Vec<PathBuf>, LoadError> {
    match cgroups {
        JobCgroups::Glob(pattern) => {
            let paths = glob::glob(pattern).map_err(|source| LoadError::Glob {
                pattern: pattern.clone(),
                source,
            })?;
            Ok(paths
                .filter_map(Result::ok)
                .filter(|p| p.is_dir())
                .collect())
        }
        JobCgroups::Pods { root, uids } => Ok(find_pod_cgroups(root, uids)),
    }
}

/// One load sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadReading {
    /// The kernel's 1-minute load average.
    pub loadavg: f64,
    /// Cores Lodger's workloads use, smoothed like the load average (None until two samples).
    pub job_load: Option<f64>,
}

impl LoadReading {
    /// Load that is not Lodger's: `loadavg - job_load`, never below zero. None until the job
    /// load is known (right after start the agent cannot tell a lodger from the owner).
    pub fn non_job(&self) -> Option<f64> {
        self.job_load.map(|j| (self.loadavg - j).max(0.0))
    }
}

/// Tracks the jobs' CPU usage between samples.
#[derive(Debug, Default)]
pub struct JobCpuTracker {
    /// Last `usage_usec` per cgroup.
    last: BTreeMap<PathBuf, u64>,
    /// Monotonic time of the last sample.
    last_at: Option<Duration>,
    /// Smoothed cores in use.
    smoothed: Option<f64>,
}

impl JobCpuTracker {
    /// Feeds the `usage_usec` of every job cgroup at monotonic time `now` and returns the
    /// smoothed cores used (None on the first sample). Cgroups seen for the first time only set
    /// a baseline; cgroups that vanished are forgotten (their last interval is lost, which errs on
    /// the side of counting load as the owner's for one sample).
    pub fn sample(&mut self, now: Duration, usage: &BTreeMap<PathBuf, u64>) -> Option<f64> {
        let previous = self.last_at.replace(now);
        let mut used_usec: u64 = 0;
        for (path, value) in usage {
            if let Some(old) = self.last.get(path) {
                used_usec += value.saturating_sub(*old);
            }
        }
        self.last = usage.clone();
        let dt = now.saturating_sub(previous?);
        if dt.is_zero() {
            return self.smoothed;
        }
        let rate = used_usec as f64 / dt.as_micros() as f64;
        // The kernel's 1-minute average decays by exp(-5 s / 60 s) every 5 s; the same decay
        // for an arbitrary interval is exp(-dt / 60 s).
        let alpha = (-dt.as_secs_f64() / 60.0).exp();
        let next = match self.smoothed {
            // Start from the first measured rate, not zero: an agent restarted beside a busy
            // lodger must not mistake the lodger's load for the owner's for a minute.
            None => rate,
            Some(prev) => prev * alpha + rate * (1.0 - alpha),
        };
        self.smoothed = Some(next);
        Some(next)
    }
}

/// Reads the load average and the job cgroups' usage from the filesystem.
#[derive(Debug)]
pub struct LoadSampler {
    /// Path of `/proc/loadavg`.
    pub loadavg_path: PathBuf,
    tracker: JobCpuTracker,
}

impl LoadSampler {
    /// A sampler reading the load average at `loadavg_path`.
    pub fn new(loadavg_path: PathBuf) -> Self {
        Self {
            loadavg_path,
            tracker: JobCpuTracker::default(),
        }
    }

    /// One sample at monotonic time `now` over the given job cgroups. A cgroup whose `cpu.stat`
    /// cannot be read (the pod just ended) is skipped.
    pub fn sample(&mut self, now: Duration, cgroups: &[PathBuf]) -> Result<LoadReading, LoadError> {
        let text =
            std::fs::read_to_string(&self.loadavg_path).map_err(|source| LoadError::Read {
                path: self.loadavg_path.clone(),
                source,
            })?;
        let loadavg = parse_loadavg(&text)?;
        let mut usage = BTreeMap::new();
        for dir in cgroups {
            if let Ok(stat) = std::fs::read_to_string(dir.join("cpu.stat"))
                && let Ok(u) = parse_usage_usec(&stat)
            {
                usage.insert(dir.clone(), u);
            }
        }
        let job_load = self.tracker.sample(now, &usage);
        Ok(LoadReading { loadavg, job_load })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, the load average is read from the wrong field or a malformed file is
    /// accepted as zero load (a busy machine would look idle).
    #[test]
    fn loadavg_fixture_parses_and_garbage_is_refused() {
        assert_eq!(parse_loadavg("0.42 0.35 0.30 2/611 12345\n").unwrap(), 0.42);
        assert_eq!(parse_loadavg("12.00 3.00 1.00 9/99 1\n").unwrap(), 12.0);
        assert_eq!(parse_loadavg("").unwrap_err().category(), "load_parse");
        assert!(parse_loadavg("nan 1 1 1/1 1").is_err());
    }

    /// If this fails, the jobs' CPU time is read from the wrong line of a real cgroup v2
    /// `cpu.stat` (e.g. `user_usec`).
    #[test]
    fn cpu_stat_fixture_parses() {
        let fixture = "usage_usec 8123456\nuser_usec 6000000\nsystem_usec 2123456\n\
                       nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(parse_usage_usec(fixture).unwrap(), 8_123_456);
        assert!(parse_usage_usec("user_usec 5\n").is_err());
    }

    /// If this fails, a lodger using one full core would count as the owner's load (the node
    /// would evict its own lodgers for being busy), or the first sample would invent a rate.
    #[test]
    fn job_cpu_from_cgroup_deltas_is_subtracted() {
        let dir = tempfile::tempdir().unwrap();
        let loadavg = dir.path().join("loadavg");
        let cg = dir.path().join("kubepods.slice/pod-a");
        std::fs::create_dir_all(&cg).unwrap();
        let write_usage = |u: u64| {
            std::fs::write(
                cg.join("cpu.stat"),
                format!("usage_usec {u}\nuser_usec {u}\n"),
            )
            .unwrap()
        };
        std::fs::write(&loadavg, "1.10 1.00 0.90 3/400 777\n").unwrap();
        let mut sampler = LoadSampler::new(loadavg.clone());
        write_usage(1_000_000);
        let first = sampler
            .sample(Duration::from_secs(100), std::slice::from_ref(&cg))
            .unwrap();
        assert_eq!(first.job_load, None);
        assert_eq!(first.non_job(), None);
        // One full core for 5 s.
        write_usage(6_000_000);
        let second = sampler
            .sample(Duration::from_secs(105), std::slice::from_ref(&cg))
            .unwrap();
        assert!((second.job_load.unwrap() - 1.0).abs() < 1e-9);
        assert!((second.non_job().unwrap() - 0.10).abs() < 1e-9);
        // The job stops; the smoothed job load decays like the kernel's average would.
        let third = sampler
            .sample(Duration::from_secs(110), std::slice::from_ref(&cg))
            .unwrap();
        let expected = (-5.0f64 / 60.0).exp();
        assert!((third.job_load.unwrap() - expected).abs() < 1e-9);
    }

    /// If this fails, a job load larger than the load average (smoothing lag) would yield a
    /// negative non-job load.
    #[test]
    fn non_job_load_never_negative() {
        let r = LoadReading {
            loadavg: 0.5,
            job_load: Some(2.0),
        };
        assert_eq!(r.non_job(), Some(0.0));
    }

    /// If this fails, the kubelet's pod cgroups (systemd or cgroupfs naming) of Lodger's pods are
    /// not found, or other pods' cgroups are counted as Lodger's.
    #[test]
    fn pod_cgroups_found_by_uid_for_both_drivers() {
        let root = tempfile::tempdir().unwrap();
        let uid_a = "0d5e4b6c-1111-2222-3333-444455556666";
        let uid_b = "9a9a9a9a-aaaa-bbbb-cccc-ddddeeeeffff";
        let systemd = root.path().join(
            "kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0d5e4b6c_1111_2222_3333_444455556666.slice",
        );
        let cgroupfs = root
            .path()
            .join("kubepods/burstable/pod9a9a9a9a-aaaa-bbbb-cccc-ddddeeeeffff");
        let other = root
            .path()
            .join("kubepods.slice/kubepods-pod12345678_0000_0000_0000_000000000000.slice");
        for d in [&systemd, &cgroupfs, &other] {
            std::fs::create_dir_all(d.join("cri-containerd-abc.scope")).unwrap();
        }
        let uids: BTreeSet<String> = [uid_a, uid_b].iter().map(|s| s.to_string()).collect();
        let found = find_pod_cgroups(root.path(), &uids);
        let mut expected = vec![systemd, cgroupfs];
        expected.sort();
        assert_eq!(found, expected);
        assert!(find_pod_cgroups(root.path(), &BTreeSet::new()).is_empty());
    }

    /// If this fails, a configured glob does not select the cgroups an admin names.
    #[test]
    fn glob_selects_directories() {
        let root = tempfile::tempdir().unwrap();
        for d in ["lodger/a", "lodger/b", "other/c"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("lodger/file"), "").unwrap();
        let pattern = format!("{}/lodger/*", root.path().display());
        let mut found = resolve(&JobCgroups::Glob(pattern)).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![root.path().join("lodger/a"), root.path().join("lodger/b")]
        );
        assert_eq!(
            resolve(&JobCgroups::Glob("[".into()))
                .unwrap_err()
                .category(),
            "load_glob"
        );
    }
}
