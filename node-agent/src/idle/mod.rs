//! Idle detection: is the desktop's owner at the machine, and is the machine busy with work that
//! is not Lodger's?
//!
//! Each source is a small module fed by real bytes (device records, file times, D-Bus replies,
//! `/proc` and cgroup files); each records the last moment it saw the owner in an
//! [`ActivityMark`]. The [`policy`] module turns those marks plus the non-job load into the
//! node's state with hysteresis; [`crate::report`] writes that state onto the Node.
//!
//! Time: every source converts what it sees to the agent's monotonic clock ([`Clock`]), so the
//! policy compares like with like and tests can inject time without sleeping.

pub mod evdev;
pub mod load;
pub mod logind;
pub mod policy;
pub mod tty;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

/// Where a sign of the owner came from (also the `source` label of the per-source metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Keyboard, mouse or touchpad records from `/dev/input/event*`.
    Evdev,
    /// Access/modify times of `/dev/tty*` and `/dev/pts/*`.
    Terminal,
    /// systemd-logind's `IdleHint`/`IdleSinceHint`.
    Logind,
}

impl Source {
    /// Every source, in a stable order.
    pub const ALL: [Source; 3] = [Source::Evdev, Source::Terminal, Source::Logind];

    /// Lower-case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Evdev => "evdev",
            Source::Terminal => "terminal",
            Source::Logind => "logind",
        }
    }
}

/// The agent's clock: a monotonic part (for the policy) and the wall clock (for file times, D-Bus
/// timestamps and the `idle-since` annotation). Monotonic values are durations since the clock's
/// epoch, so tests can build any instant they like.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Monotonic time since the epoch.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Converts a wall-clock moment to the monotonic scale, given the wall clock now. Moments in
    /// the future (clock steps, files touched with odd times) count as now; moments before the
    /// epoch count as the epoch.
    pub fn monotonic_of(now_mono: Duration, now_wall: SystemTime, then: SystemTime) -> Duration {
        let age = now_wall.duration_since(then).unwrap_or(Duration::ZERO);
        now_mono.saturating_sub(age)
    }
}

/// The last moment one source saw the owner, shared between the source's task (writer) and the
/// policy loop (reader). Lock-free: an evdev mouse produces hundreds of records a second.
#[derive(Debug)]
pub struct ActivityMark {
    /// Microseconds since the clock's epoch, rounded up, plus one; 0 means "never".
    micros_plus_one: AtomicU64,
    /// Wakes the policy loop at once when a source sees the owner after a quiet spell.
    wake: Arc<Notify>,
}

impl ActivityMark {
    /// A mark that has seen nothing yet and wakes `wake` on news.
    pub fn new(wake: Arc<Notify>) -> Self {
        Self {
            micros_plus_one: AtomicU64::new(0),
            wake,
        }
    }

    /// Records activity at `at` (monotonic); never moves the mark backwards. Wakes the policy
    /// loop when the previous mark is older than a second (so a stream of mouse motion does not
    /// wake it hundreds of times a second).
    pub fn record(&self, at: Duration) {
        // NB: rounded up, never down: input read a fraction of a unit after the node went idle
        // must still compare as newer than that moment.
        let micros = u64::try_from(at.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX - 1);
        let new = micros.saturating_add(1);
        let old = self.micros_plus_one.fetch_max(new, Ordering::Relaxed);
        if new > old && new - old >= 1_000_000 {
            self.wake.notify_one();
        }
    }

    /// The newest moment recorded, if any.
    pub fn last(&self) -> Option<Duration> {
        match self.micros_plus_one.load(Ordering::Relaxed) {
            0 => None,
            v => Some(Duration::from_micros(v - 1)),
        }
    }
}

/// One [`ActivityMark`] per [`Source`], plus the wake-up they share.
#[derive(Debug)]
pub struct ActivityMarks {
    /// evdev input.
    pub evdev: ActivityMark,
    /// terminal times.
    pub terminal: ActivityMark,
    /// logind hints.
    pub logind: ActivityMark,
    /// Notified when any source sees the owner after a quiet spell.
    pub wake: Arc<Notify>,
}

impl Default for ActivityMarks {
    fn default() -> Self {
        let wake = Arc::new(Notify::new());
        Self {
            evdev: ActivityMark::new(wake.clone()),
            terminal: ActivityMark::new(wake.clone()),
            logind: ActivityMark::new(wake.clone()),
            wake,
        }
    }
}

impl ActivityMarks {
    /// The mark of `source`.
    pub fn get(&self, source: Source) -> &ActivityMark {
        match source {
            Source::Evdev => &self.evdev,
            Source::Terminal => &self.terminal,
            Source::Logind => &self.logind,
        }
    }

    /// The newest activity any source saw.
    pub fn newest(&self) -> Option<Duration> {
        Source::ALL.iter().filter_map(|s| self.get(*s).last()).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, a late-arriving older reading (a terminal time sampled after a newer evdev
    /// record) could move the owner's last activity backwards and declare the node idle early.
    #[test]
    fn marks_never_move_backwards_and_newest_spans_sources() {
        let marks = ActivityMarks::default();
        assert_eq!(marks.newest(), None);
        marks.evdev.record(Duration::from_secs(10));
        marks.evdev.record(Duration::from_secs(4));
        assert_eq!(marks.evdev.last(), Some(Duration::from_secs(10)));
        marks.terminal.record(Duration::from_secs(12));
        assert_eq!(marks.newest(), Some(Duration::from_secs(12)));
    }

    /// If this fails, input read a fraction of a millisecond after the node went idle could be
    /// stored as older than that moment and ignored (the owner's return missed).
    #[test]
    fn marks_round_up_never_down() {
        let marks = ActivityMarks::default();
        let at = Duration::from_nanos(1_000_900_001);
        marks.evdev.record(at);
        assert!(marks.evdev.last().unwrap() >= at);
        assert!(marks.evdev.last().unwrap() - at < Duration::from_micros(1));
    }

    /// If this fails, file times in the future or before the agent started would yield instants
    /// outside the monotonic scale and break the policy's arithmetic.
    #[test]
    fn wall_times_map_onto_the_monotonic_scale() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mono = Duration::from_secs(100);
        assert_eq!(
            Clock::monotonic_of(mono, wall, wall - Duration::from_secs(30)),
            Duration::from_secs(70)
        );
        assert_eq!(
            Clock::monotonic_of(mono, wall, wall + Duration::from_secs(30)),
            mono
        );
        assert_eq!(
            Clock::monotonic_of(mono, wall, wall - Duration::from_secs(3000)),
            Duration::ZERO
        );
    }
}
