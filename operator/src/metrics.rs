//! Prometheus metrics of the operator: reconciles, errors by kind and durations per controller, and
//! whether this replica is the leader.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::crd::BackupStatus;

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub leader: IntGauge,
    /// Per SyncNode with backups: when the newest successful run finished.
    pub backup_last_success: IntGaugeVec,
    /// Per SyncNode with backups: 1 while the newest run failed.
    pub backup_last_run_failed: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "syncrelay_operator_reconciles_total",
                "Reconciles run, per controller",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "syncrelay_operator_reconcile_errors_total",
                "Failed reconciles, per controller and error kind",
            ),
            &["controller", "kind"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "syncrelay_operator_reconcile_duration_seconds",
                "Reconcile duration per controller",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "syncrelay_operator_leader",
            "1 while this replica holds the Lease",
        )
        .expect("valid metric");
        let backup_last_success = IntGaugeVec::new(
            Opts::new(
                "syncrelay_operator_backup_last_success_timestamp_seconds",
                "When the newest successful backup of a node set finished (Unix seconds; 0: none kept)",
            ),
            &["namespace", "syncnode"],
        )
        .expect("valid metric");
        let backup_last_run_failed = IntGaugeVec::new(
            Opts::new(
                "syncrelay_operator_backup_last_run_failed",
                "1 while the newest backup run of a node set failed",
            ),
            &["namespace", "syncnode"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(backup_last_success.clone()),
            Box::new(backup_last_run_failed.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
            backup_last_success,
            backup_last_run_failed,
        }
    }

    /// The backup gauges of one SyncNode (removed when it has no backups).
    pub fn record_backup(&self, namespace: &str, name: &str, backup: Option<&BackupStatus>) {
        let labels = [namespace, name];
        let Some(b) = backup.filter(|b| b.scheduled) else {
            let _ = self.backup_last_success.remove_label_values(&labels);
            let _ = self.backup_last_run_failed.remove_label_values(&labels);
            return;
        };
        let success = b
            .last_success
            .as_ref()
            .and_then(|r| r.completion_time.as_deref())
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second());
        self.backup_last_success
            .with_label_values(&labels)
            .set(success);
        let failed = b
            .last_run
            .as_ref()
            .is_some_and(|r| r.result == crate::controller::backup::FAILED);
        self.backup_last_run_failed
            .with_label_values(&labels)
            .set(i64::from(failed));
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
