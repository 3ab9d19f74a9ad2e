//! The idle policy: from the owner's last sign and the non-job load to the node's state, with
//! hysteresis. Pure: time comes in with each [`Observation`], so tests drive it without sleeping.
//!
//! Rules (Sprite's "no input for 30 s and a low load", HTCondor's load thresholds):
//! - **Active at once**: input newer than the moment the node went idle, or a non-job load above
//!   `busy_load` (HTCondor's `HighLoad`, 0.5), makes the node Active on the next observation.
//! - **Idle only after a quiet spell**: the node becomes Idle once, for `idle_after` (default 30 s,
//!   as Sprite), there has been no input and the non-job load has stayed below `idle_load`
//!   (HTCondor's `BackgroundLoad`, 0.3).
//! - **Dead band**: a load between the two thresholds changes nothing, so a load hovering around
//!   one threshold cannot make the node flap.
//! - **Start-up**: the state is Unknown (nothing is written) until the first decision; the quiet
//!   spell counts from the agent's start, so an agent restart neither evicts lodgers (it does not
//!   declare the owner active without a sign) nor places new ones early.

use std::time::Duration;

/// Thresholds of the policy (all configurable by flags and environment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// Quiet time (no input, low load) before the node counts as idle.
    pub idle_after: Duration,
    /// Non-job load below which the machine counts as quiet.
    pub idle_load: f64,
    /// Non-job load above which the machine counts as busy (owner active).
    pub busy_load: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(30),
            idle_load: 0.3,
            busy_load: 0.5,
        }
    }
}

/// Why the node is Active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveCause {
    /// Keyboard, mouse, terminal or a session in use.
    Input,
    /// Non-job load above `busy_load`.
    Load,
    /// Active before and not yet quiet for long enough.
    NotQuietYet,
}

/// The node's state as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NodeState {
    /// No decision yet (just started, not quiet for `idle_after` and no sign of the owner).
    Unknown,
    /// The owner is at the machine, or it is busy.
    Active(ActiveCause),
    /// Idle since this monotonic moment.
    Idle {
        /// When the node became idle.
        since: Duration,
    },
}

impl NodeState {
    /// True for [`NodeState::Idle`].
    pub fn is_idle(&self) -> bool {
        matches!(self, NodeState::Idle { .. })
    }
}

/// What the sources say at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// Monotonic now.
    pub now: Duration,
    /// The newest sign of the owner from any input source.
    pub last_input: Option<Duration>,
    /// Non-job load (None while unknown).
    pub non_job_load: Option<f64>,
}

/// The policy's memory between observations.
#[derive(Clone, Debug)]
pub struct Policy {
    thresholds: Thresholds,
    state: NodeState,
    /// When quietness could first have started: the agent's start.
    started: Duration,
    /// The last moment the non-job load was at or above `idle_load`.
    last_loud: Option<Duration>,
}

impl Policy {
    /// A policy started at monotonic `now`.
    pub fn new(thresholds: Thresholds, now: Duration) -> Self {
        Self {
            thresholds,
            state: NodeState::Unknown,
            started: now,
            last_loud: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Feeds one observation and returns the (possibly new) state.
    pub fn observe(&mut self, obs: Observation) -> NodeState {
        let t = self.thresholds;
        if let Some(load) = obs.non_job_load
            && load >= t.idle_load
        {
            self.last_loud = Some(obs.now);
        }
        let busy = obs.non_job_load.is_some_and(|l| l > t.busy_load);
        // Input counts as "new" if it is newer than the start of the current idle spell, or, in
        // any other state, if it falls inside the quiet window.
        let fresh_input = obs.last_input.is_some_and(|i| match self.state {
            NodeState::Idle { since } => i > since,
            _ => obs.now.saturating_sub(i) < t.idle_after,
        });
        let quiet_since = [Some(self.started), obs.last_input, self.last_loud]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.started);
        let quiet_long_enough = obs.now.saturating_sub(quiet_since) >= t.idle_after;
        let calm = obs.non_job_load.is_some_and(|l| l < t.idle_load);

        self.state = if fresh_input {
            NodeState::Active(ActiveCause::Input)
        } else if busy {
            NodeState::Active(ActiveCause::Load)
        } else {
            match self.state {
                idle @ NodeState::Idle { .. } => idle,
                _ if quiet_long_enough && calm => NodeState::Idle { since: obs.now },
                NodeState::Unknown => NodeState::Unknown,
                NodeState::Active(_) => NodeState::Active(ActiveCause::NotQuietYet),
            }
        };
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn obs(now: u64, last_input: Option<u64>, load: f64) -> Observation {
        Observation {
            now: s(now),
            last_input: last_input.map(s),
            non_job_load: Some(load),
        }
    }

    /// If this fails, a freshly started agent would either write a state it has no evidence for
    /// (evicting lodgers on every agent restart) or never declare a quiet machine idle.
    #[test]
    fn start_is_unknown_until_quiet_for_idle_after() {
        let mut p = Policy::new(Thresholds::default(), s(100));
        assert_eq!(p.observe(obs(100, None, 0.0)), NodeState::Unknown);
        assert_eq!(p.observe(obs(129, None, 0.0)), NodeState::Unknown);
        assert_eq!(
            p.observe(obs(130, None, 0.0)),
            NodeState::Idle { since: s(130) }
        );
    }

    /// If this fails, the idle threshold is off by one at its edge: the node must become idle
    /// exactly when `idle_after` has passed since the last input, not a tick earlier.
    #[test]
    fn idle_threshold_edge() {
        let mut p = Policy::new(Thresholds::default(), s(0));
        assert_eq!(
            p.observe(obs(10, Some(10), 0.0)),
            NodeState::Active(ActiveCause::Input)
        );
        assert_eq!(
            p.observe(obs(39, Some(10), 0.0)),
            NodeState::Active(ActiveCause::Input)
        );
        // 29.999 s after input: still not idle.
        let almost = Observation {
            now: s(39) + Duration::from_millis(999),
            last_input: Some(s(10)),
            non_job_load: Some(0.0),
        };
        assert!(!p.observe(almost).is_idle());
        assert_eq!(
            p.observe(obs(40, Some(10), 0.0)),
            NodeState::Idle { since: s(40) }
        );
    }

    /// If this fails, the owner returning to an idle node would not make it Active at once (the
    /// taint, and the eviction of lodgers, would lag), or flapping input would make the label
    /// flap: each touch restarts the whole quiet spell.
    #[test]
    fn flapping_input_goes_active_at_once_and_idle_only_after_a_full_quiet_spell() {
        let mut p = Policy::new(Thresholds::default(), s(0));
        assert!(p.observe(obs(30, None, 0.0)).is_idle());
        // A touch at 31: active on the next observation, even the same second.
        assert_eq!(
            p.observe(obs(31, Some(31), 0.0)),
            NodeState::Active(ActiveCause::Input)
        );
        // Touches every 20 s keep it active.
        for t in [51, 71, 91] {
            assert!(!p.observe(obs(t, Some(t), 0.0)).is_idle());
            assert!(!p.observe(obs(t + 15, Some(t), 0.0)).is_idle());
        }
        assert_eq!(
            p.observe(obs(120, Some(91), 0.0)),
            NodeState::Active(ActiveCause::Input)
        );
        assert_eq!(
            p.observe(obs(121, Some(91), 0.0)),
            NodeState::Idle { since: s(121) }
        );
        // Input older than the idle spell (a terminal time read late) does not wake it.
        assert!(p.observe(obs(125, Some(100), 0.0)).is_idle());
    }

    /// If this fails, the owner's own heavy work (a compile) would not evict lodgers, or a load
    /// hovering in the dead band between 0.3 and 0.5 would make the node flap.
    #[test]
    fn load_spikes_and_dead_band() {
        let mut p = Policy::new(Thresholds::default(), s(0));
        assert!(p.observe(obs(30, None, 0.1)).is_idle());
        // In the dead band an idle node stays idle.
        assert!(p.observe(obs(40, None, 0.45)).is_idle());
        // A spike above 0.5 makes it active at once.
        assert_eq!(
            p.observe(obs(41, None, 0.9)),
            NodeState::Active(ActiveCause::Load)
        );
        // Back in the dead band: stays active.
        assert_eq!(
            p.observe(obs(50, None, 0.4)),
            NodeState::Active(ActiveCause::NotQuietYet)
        );
        // Calm from 51 on: idle only 30 s after the last loud sample (50).
        assert!(!p.observe(obs(51, None, 0.2)).is_idle());
        assert!(!p.observe(obs(79, None, 0.2)).is_idle());
        assert_eq!(
            p.observe(obs(80, None, 0.2)),
            NodeState::Idle { since: s(80) }
        );
    }

    /// If this fails, the node could be declared idle while the load is unknown (right after
    /// start the agent cannot tell its lodgers' load from the owner's).
    #[test]
    fn unknown_load_never_makes_a_node_idle() {
        let mut p = Policy::new(Thresholds::default(), s(0));
        let o = Observation {
            now: s(100),
            last_input: None,
            non_job_load: None,
        };
        assert_eq!(p.observe(o), NodeState::Unknown);
    }

    /// If this fails, the thresholds configured by flags (e.g. a lab's 15 minutes, HTCondor's
    /// StartIdleTime) are not the ones the policy applies.
    #[test]
    fn configured_thresholds_apply() {
        let t = Thresholds {
            idle_after: s(15 * 60),
            idle_load: 0.1,
            busy_load: 2.0,
        };
        let mut p = Policy::new(t, s(0));
        assert!(!p.observe(obs(899, None, 0.0)).is_idle());
        assert!(p.observe(obs(900, None, 0.0)).is_idle());
        assert!(p.observe(obs(901, None, 1.5)).is_idle(), "1.5 < busy 2.0");
        assert_eq!(
            p.observe(obs(902, None, 2.5)),
            NodeState::Active(ActiveCause::Load)
        );
    }
}
