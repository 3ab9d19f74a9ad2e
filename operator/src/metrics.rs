//! Prometheus metrics (prometheus-client), served on `/metrics` by [`crate::server`]: reconciles,
//! failures by category, migrations by reason and strategy, freeze and downtime histograms, jobs
//! by phase and parked jobs. Written by the reconcilers, read by the scrape handler.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `migratablejob` or `checkpoint`.
    pub controller: String,
}

/// Label set `{category}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// Stable error category (`Error::category`).
    pub category: String,
}

/// Label set `{reason, strategy}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// Checkpoint reason.
    pub reason: String,
    /// Strategy used.
    pub strategy: String,
}

/// Label set `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Job phase.
    pub phase: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Reconciles run.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconcile failures by category.
    pub failures: Family<CategoryLabels, Counter>,
    /// Completed migrations.
    pub migrations: Family<MigrationLabels, Counter>,
    /// Freeze time of migrations, seconds.
    pub freeze_seconds: Histogram,
    /// Downtime of migrations, seconds.
    pub downtime_seconds: Histogram,
    /// Reconcile duration, seconds.
    pub reconcile_seconds: Histogram,
    /// Jobs by phase.
    pub jobs: Family<PhaseLabels, Gauge>,
    /// Jobs parked on the volume.
    pub parked: Gauge,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lodger_operator");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            reconciles: Family::default(),
            failures: Family::default(),
            migrations: Family::default(),
            freeze_seconds: Histogram::new(buckets()),
            downtime_seconds: Histogram::new(buckets()),
            reconcile_seconds: Histogram::new(buckets()),
            jobs: Family::default(),
            parked: Gauge::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile failures by category",
            m.failures.clone(),
        );
        registry.register(
            "migrations",
            "Completed migrations by reason and strategy",
            m.migrations.clone(),
        );
        registry.register(
            "migration_freeze_seconds",
            "Time a job was frozen for its checkpoint",
            m.freeze_seconds.clone(),
        );
        registry.register(
            "migration_downtime_seconds",
            "Time from a job stopping on the source to running Ready on the target",
            m.downtime_seconds.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            m.reconcile_seconds.clone(),
        );
        registry.register("jobs", "MigratableJobs by phase", m.jobs.clone());
        registry.register(
            "parked_jobs",
            "MigratableJobs parked on the checkpoint volume",
            m.parked.clone(),
        );
        *m.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        m
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // NB: writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition carries every family under the `lodger_operator_` prefix; if this breaks,
    /// dashboards and alerts lose their series.
    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::default();
        m.migrations
            .get_or_create(&MigrationLabels {
                reason: "OwnerReturned".into(),
                strategy: "StopAndCopy".into(),
            })
            .inc();
        m.downtime_seconds.observe(0.3);
        m.jobs
            .get_or_create(&PhaseLabels {
                phase: "Running".into(),
            })
            .set(2);
        let text = m.encode();
        for name in [
            "lodger_operator_migrations_total{reason=\"OwnerReturned\",strategy=\"StopAndCopy\"} 1",
            "lodger_operator_migration_downtime_seconds_count 1",
            "lodger_operator_jobs{phase=\"Running\"} 2",
            "lodger_operator_parked_jobs",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
