//! Prometheus metrics of the node. Request labels are bounded: the endpoint is a known operation name
//! or `other`, never a raw path.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::status::CacheStatus;
use crate::store::StoreRegistry;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub verification_failures: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub directory_reloads: IntCounterVec,
    pub entries_ingested: IntCounterVec,
    store_entries: IntGaugeVec,
    store_bytes: IntGaugeVec,
    store_keys_waiting: IntGaugeVec,
    store_max_receipt_order: IntGaugeVec,
    compaction_enabled: IntGaugeVec,
    compactions: IntGaugeVec,
    compacted_bytes: IntGaugeVec,
    compacted_keys: IntGaugeVec,
    compaction_ms: IntGaugeVec,
    last_compaction: IntGaugeVec,
    disk_bytes: IntGaugeVec,
    /// The engine's own maintenance (fjall's LSM compactions; sled reports none).
    engine_compactions: IntGaugeVec,
    engine_compaction_seconds: prometheus::GaugeVec,
    engine_tables: IntGaugeVec,
    /// Entries of the source past the sync cursor, per link, store and direction.
    pub sync_lag: IntGaugeVec,
    /// Seconds since the last successful sync pass with a link (refreshed on render).
    pub sync_age_seconds: IntGaugeVec,
    pub sync_entries: IntCounterVec,
    pub sync_bytes: IntCounterVec,
    pub sync_errors: IntCounterVec,
    pub bloom_rechecks: IntCounterVec,
    pub cache_events: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    /// Client writes stored locally but not yet confirmed by the upstream.
    pub queued_writes: IntGaugeVec,
    pub open_connections: IntGauge,
    /// Connections closed at once with 503, by the limit they met.
    pub connections_refused: IntCounterVec,
    /// Requests refused by a resource bound (body deadline, body memory, response size,
    /// databases per tenant, storage unwritable), by reason.
    pub requests_refused: IntCounterVec,
    /// Entries pulled from a link and held back for a reason that can change (an author this
    /// node's directory does not know yet), per link and store; retried when the directory changes.
    pub held_entries: IntGaugeVec,
    /// 1 while the storage refuses writes (disk full or failing), else 0.
    pub storage_unwritable: IntGauge,
    /// Per link and state (current, catching-up, stalled, down): 1 for the link's state, 0 for
    /// the others (refreshed on render).
    pub link_state: IntGaugeVec,
    /// Seconds without movement while reachable and behind; 0 unless stalled.
    pub link_stalled_seconds: IntGaugeVec,
    /// now − the origin's receipt time of each entry stored from a link.
    pub replication_delay: HistogramVec,
    /// Delays that came out negative (this host's clock behind the origin's), counted as 0.
    pub replication_clock_skew: IntCounterVec,
    /// Entries stored from a link without an origin receipt time (not witnessed): not timed.
    pub replication_unmeasured: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let store = &["tenant", "db", "kind"];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "syncrelay_http_request_duration_seconds",
                "Request latency by endpoint",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let replication_delay = HistogramVec::new(
            HistogramOpts::new(
                "syncrelay_replication_delay_seconds",
                "Time from the origin's receipt of an entry to its storage here, per link",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
            ]),
            &["link"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(replication_delay.clone()))
            .expect("unique metric");
        Metrics {
            replication_delay,
            replication_clock_skew: counter(
                "syncrelay_replication_clock_skew_total",
                "Replication delays that came out negative (clock skew between hosts), counted as 0",
                &["link"],
            ),
            replication_unmeasured: counter(
                "syncrelay_replication_unmeasured_entries_total",
                "Entries stored from a link without an origin receipt time (not witnessed), so not timed",
                &["link"],
            ),
            link_state: gauge(
                "syncrelay_link_state",
                "1 for the link's state (current, catching-up, stalled, down), 0 for the others",
                &["link", "state"],
            ),
            link_stalled_seconds: gauge(
                "syncrelay_link_stalled_seconds",
                "Seconds a reachable link that is behind has gone without movement; 0 unless stalled",
                &["link"],
            ),
            requests: counter(
                "syncrelay_http_requests_total",
                "Requests by endpoint and status",
                &["endpoint", "status"],
            ),
            latency,
            verification_failures: counter(
                "syncrelay_verification_failures_total",
                "Pushed entries rejected on ingest, by reason",
                &["reason"],
            ),
            auth_failures: counter(
                "syncrelay_auth_failures_total",
                "Failed challenge/authenticate/token checks",
                &["reason"],
            ),
            directory_reloads: counter(
                "syncrelay_directory_reloads_total",
                "Directory file reloads",
                &["result"],
            ),
            entries_ingested: counter(
                "syncrelay_entries_ingested_total",
                "Entries newly stored through pushes",
                &["tenant", "kind"],
            ),
            store_entries: gauge("syncrelay_store_entries", "Entries stored", store),
            store_bytes: gauge(
                "syncrelay_store_payload_bytes",
                "Distinct payload bytes stored",
                store,
            ),
            store_keys_waiting: gauge(
                "syncrelay_store_index_keys_waiting",
                "Index keys the store's maintenance found to merge and has not merged yet",
                store,
            ),
            store_max_receipt_order: gauge(
                "syncrelay_store_max_receipt_order",
                "Highest receiptOrder",
                store,
            ),
            compaction_enabled: gauge(
                "syncrelay_store_compaction_enabled",
                "1 if the store runs compaction",
                store,
            ),
            compactions: gauge(
                "syncrelay_store_compactions_total",
                "Compactions since start",
                store,
            ),
            compacted_bytes: gauge(
                "syncrelay_store_compacted_bytes_total",
                "Bytes of index values compaction rewrote or removed, since start",
                store,
            ),
            compacted_keys: gauge(
                "syncrelay_store_compacted_keys_total",
                "Index keys compaction merged away, since start (getCompactionStatus totalCompactedFiles)",
                store,
            ),
            compaction_ms: gauge(
                "syncrelay_store_compaction_milliseconds_total",
                "Time spent compacting, since start",
                store,
            ),
            last_compaction: gauge(
                "syncrelay_store_last_compaction_timestamp_seconds",
                "When the last compaction of the store finished (0: none since start)",
                store,
            ),
            disk_bytes: gauge(
                "syncrelay_storage_disk_bytes",
                "Bytes the storage backend occupies on disk",
                &["backend"],
            ),
            engine_compactions: gauge(
                "syncrelay_storage_engine_compactions_total",
                "Compactions the storage engine itself completed (fjall's LSM), since start",
                &["backend"],
            ),
            engine_compaction_seconds: {
                let g = prometheus::GaugeVec::new(
                    prometheus::Opts::new(
                        "syncrelay_storage_engine_compaction_seconds_total",
                        "Time the storage engine itself spent compacting, since start",
                    ),
                    &["backend"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            engine_tables: gauge(
                "syncrelay_storage_engine_tables",
                "Table files the storage engine holds now (fjall's LSM)",
                &["backend"],
            ),
            sync_lag: gauge(
                "syncrelay_sync_lag_entries",
                "Entries of the source past the sync cursor",
                &["link", "tenant", "db", "kind", "direction"],
            ),
            sync_age_seconds: gauge(
                "syncrelay_sync_seconds_since_success",
                "Seconds since the last successful sync pass with a link",
                &["link"],
            ),
            sync_entries: counter(
                "syncrelay_sync_entries_total",
                "Entries transferred by the sync engine",
                &["link", "direction"],
            ),
            sync_bytes: counter(
                "syncrelay_sync_bytes_total",
                "Payload bytes transferred by the sync engine",
                &["link", "direction"],
            ),
            sync_errors: counter(
                "syncrelay_sync_errors_total",
                "Failed sync passes and forwards, by kind",
                &["link", "kind"],
            ),
            bloom_rechecks: counter(
                "syncrelay_bloom_false_positive_rechecks_total",
                "Ids a bloom summary called maybe-present that hasEntries found missing",
                &["link"],
            ),
            cache_events: counter(
                "syncrelay_cache_events_total",
                "Edge cache hits, misses and evictions (entries), and upstream fetches filling misses (requests)",
                &["event"],
            ),
            cache_bytes: gauge(
                "syncrelay_cache_bytes",
                "Bytes held by the edge cache, and its limit",
                &["kind"],
            ),
            queued_writes: gauge(
                "syncrelay_queued_writes",
                "Client writes stored locally, not yet confirmed by the upstream",
                &["link"],
            ),
            open_connections: plain_gauge(
                &registry,
                "syncrelay_open_connections",
                "Open client connections",
            ),
            connections_refused: counter(
                "syncrelay_connections_refused_total",
                "Connections refused: answered 503 and closed at once by the limit they met, or closed for sending no request in time (no_request)",
                &["reason"],
            ),
            requests_refused: counter(
                "syncrelay_requests_refused_total",
                "Requests refused by a resource bound, by reason",
                &["reason"],
            ),
            held_entries: gauge(
                "syncrelay_held_entries",
                "Entries held back for a reason that can change (pull: an author this node's directory does not know yet; push: refused upstream as untrusted)",
                &["link", "tenant", "db", "kind", "direction"],
            ),
            storage_unwritable: plain_gauge(
                &registry,
                "syncrelay_storage_unwritable",
                "1 while the storage refuses writes (disk full or failing)",
            ),
            registry,
        }
    }

    /// Brings the cache figures up to the cache's own counters (which only grow).
    fn record_cache(&self, cache: &CacheStatus) {
        for (event, total) in [
            ("hit", cache.hits),
            ("miss", cache.misses),
            ("eviction", cache.evictions),
            ("upstream_fetch", cache.upstream_fetches),
        ] {
            let counter = self.cache_events.with_label_values(&[event]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.cache_bytes
            .with_label_values(&["limit"])
            .set(cache.max_bytes as i64);
        self.cache_bytes
            .with_label_values(&["used"])
            .set(cache.bytes as i64);
    }

    /// Refreshes store gauges and renders the text exposition format.
    pub async fn render(&self, stores: &StoreRegistry, cache: Option<CacheStatus>) -> String {
        if let Some(cache) = cache {
            self.record_cache(&cache);
        }
        for store in stores.opened() {
            let id = store.id();
            let labels = [id.tenant_id.as_str(), id.db_id.as_str(), id.kind.as_str()];
            if let Ok(stats) = store.stats().await {
                self.store_entries
                    .with_label_values(&labels)
                    .set(stats.entries as i64);
                self.store_bytes
                    .with_label_values(&labels)
                    .set(stats.payload_bytes as i64);
                self.store_keys_waiting
                    .with_label_values(&labels)
                    .set(stats.index_keys_waiting as i64);
            }
            if let Ok(head) = store.get_store_head().await {
                self.store_max_receipt_order
                    .with_label_values(&labels)
                    .set(head.max_receipt_order as i64);
            }
            if let Ok(c) = store.compaction_status().await {
                self.compaction_enabled
                    .with_label_values(&labels)
                    .set(c.enabled as i64);
                self.compactions
                    .with_label_values(&labels)
                    .set(c.total_compactions as i64);
                self.compacted_bytes
                    .with_label_values(&labels)
                    .set(c.total_compacted_bytes as i64);
                self.compacted_keys
                    .with_label_values(&labels)
                    .set(c.total_compacted_files as i64);
                self.compaction_ms
                    .with_label_values(&labels)
                    .set(c.total_compaction_duration_ms as i64);
                self.last_compaction
                    .with_label_values(&labels)
                    .set(c.last_compaction_at.unwrap_or(0) / 1000);
            }
        }
        if let Some(engine) = stores.engine() {
            let label = [engine.as_str()];
            if let Some(bytes) = stores.size_on_disk() {
                self.disk_bytes.with_label_values(&label).set(bytes as i64);
            }
            if let Some(m) = stores.engine_maintenance() {
                self.engine_compactions
                    .with_label_values(&label)
                    .set(m.compactions as i64);
                self.engine_compaction_seconds
                    .with_label_values(&label)
                    .set(m.compacting.as_secs_f64());
                self.engine_tables
                    .with_label_values(&label)
                    .set(m.tables as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// Bounded endpoint label for a request path.
pub fn endpoint_label(path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts[..] {
        ["health"] | ["metrics"] => parts[0].to_string(),
        [".well-known", "mindoodb-server-info"] => "server-info".into(),
        [_, "auth", op @ ("challenge" | "authenticate")] => format!("auth/{op}"),
        [_, "sync", kind @ ("docs" | "attachments"), op] if crate::wire::is_known_operation(op) => {
            format!("sync/{kind}/{op}")
        }
        _ => "other".into(),
    }
}
