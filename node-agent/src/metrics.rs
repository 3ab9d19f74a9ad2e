//! Prometheus metrics of the node agent (served on `/metrics` by [`crate::http`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set with one `source` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Idle source (`evdev`, `terminal`, `logind`).
    pub source: String,
}

/// Label set with one `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome (`completed`, `failed`, ... or an error category).
    pub result: String,
}

/// Label set with one `category` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// Error category (`category()` of the module's error).
    pub category: String,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 while the node is idle, 0 while active, -1 while undecided.
    pub idle: Gauge,
    /// Seconds since each source last saw the owner.
    pub seconds_since_input: Family<SourceLabel, GaugeF64>,
    /// The 1-minute load average.
    pub load_average: GaugeF64,
    /// Load from Lodger's own workloads (cores, smoothed like the load average).
    pub job_load: GaugeF64,
    /// Load that is not Lodger's.
    pub non_job_load: GaugeF64,
    /// Checkpoints by result (`completed`, `failed`).
    pub checkpoints: Family<ResultLabel, Counter>,
    /// Duration of checkpoints, seconds.
    pub checkpoint_duration: Histogram,
    /// Signals by result (`delivered`, `queued`, `duplicate`, `failed`).
    pub signals: Family<ResultLabel, Counter>,
    /// Errors by category.
    pub errors: Family<CategoryLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `lodger_node_agent` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lodger_node_agent");
        let idle = Gauge::default();
        registry.register(
            "idle",
            "1 while the node is idle, 0 while the owner is active or it is busy, -1 undecided",
            idle.clone(),
        );
        let seconds_since_input = Family::<SourceLabel, GaugeF64>::default();
        registry.register(
            "seconds_since_input",
            "Seconds since each idle source last saw the owner",
            seconds_since_input.clone(),
        );
        let load_average = GaugeF64::default();
        registry.register(
            "load_average",
            "The kernel's 1-minute load average",
            load_average.clone(),
        );
        let job_load = GaugeF64::default();
        registry.register(
            "job_load",
            "Cores used by Lodger's workloads, smoothed like the load average",
            job_load.clone(),
        );
        let non_job_load = GaugeF64::default();
        registry.register(
            "non_job_load",
            "Load average minus Lodger's own workloads",
            non_job_load.clone(),
        );
        let checkpoints = Family::<ResultLabel, Counter>::default();
        registry.register(
            "checkpoints",
            "Checkpoints driven by this agent, by result",
            checkpoints.clone(),
        );
        let checkpoint_duration = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]);
        registry.register(
            "checkpoint_duration_seconds",
            "Duration of checkpoints from request to result",
            checkpoint_duration.clone(),
        );
        let signals = Family::<ResultLabel, Counter>::default();
        registry.register(
            "signals",
            "JobSignals handed to shims, by result",
            signals.clone(),
        );
        let errors = Family::<CategoryLabel, Counter>::default();
        registry.register("errors", "Errors by category", errors.clone());
        idle.set(-1);
        Self {
            registry,
            idle,
            seconds_since_input,
            load_average,
            job_load,
            non_job_load,
            checkpoints,
            checkpoint_duration,
            signals,
            errors,
        }
    }

    /// Counts an error of `category`.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&CategoryLabel {
                category: category.to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // NB: writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// If this fails, dashboards and alerts keyed on these names break.
    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.checkpoints
            .get_or_create(&ResultLabel {
                result: "completed".into(),
            })
            .inc();
        m.seconds_since_input
            .get_or_create(&SourceLabel {
                source: "evdev".into(),
            })
            .set(12.5);
        m.checkpoint_duration.observe(1.5);
        let text = m.encode();
        for needle in [
            "lodger_node_agent_idle -1",
            "lodger_node_agent_checkpoints_total{result=\"completed\"} 1",
            "lodger_node_agent_seconds_since_input{source=\"evdev\"} 12.5",
            "lodger_node_agent_checkpoint_duration_seconds_count 1",
            "lodger_node_agent_non_job_load",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
