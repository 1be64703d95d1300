//! Assembling and running a node: identity, directory, auth secret, storage, HTTP(S) listener,
//! graceful shutdown that flushes the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::AuthService;
use crate::client::cache::EdgeCache;
use crate::client::SessionOptions;
use crate::config::{NodeConfig, Role};
use crate::crypto::keys::Identity;
use crate::directory::DirectoryHandle;
use crate::metrics::Metrics;
use crate::roles::replication::{SyncQueue, UpstreamFeeds};
use crate::roles::{self, Node, SharedNode};
use crate::server::connections::{ConnectionLimits, FirstByteDeadline, LimitedAcceptor};
use crate::server::{self, AppState, Limiters, SharedState};
use crate::store::index_compaction::CompactionThresholds;
use crate::store::{StorageBackend, StoreRegistry};
use crate::sync::links::Links;

/// Loads the configured identity, or the one generated earlier under `dataDir/identity`, or
/// generates and keeps a new one.
pub fn load_identity(config: &NodeConfig) -> anyhow::Result<Identity> {
    if let (Some(s), Some(e)) = (
        &config.identity.signing_key_file,
        &config.identity.encryption_key_file,
    ) {
        return Identity::load(s, e).context("loading the node identity");
    }
    let dir = config.data_dir.join("identity");
    let (s, e) = (dir.join("signing.pem"), dir.join("encryption.pem"));
    if s.exists() && e.exists() {
        return Identity::load(&s, &e).context("loading the generated node identity");
    }
    tracing::info!(dir = %dir.display(), "generating the node identity (Ed25519 + RSA-3072)");
    let identity = Identity::generate()?;
    identity.save(&dir)?;
    Ok(identity)
}

fn auth_secret(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(p) => {
            let secret =
                std::fs::read(p).with_context(|| format!("reading auth secret {}", p.display()))?;
            let trimmed = secret.trim_ascii().to_vec();
            anyhow::ensure!(
                trimmed.len() >= 32,
                "auth secret {} must hold at least 32 bytes",
                p.display()
            );
            Ok(trimmed)
        }
        None => Ok(AuthService::random_secret()),
    }
}

fn status_token(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the status token {}", path.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(
        token.len() >= 16,
        "status token {} must hold at least 16 characters",
        path.display()
    );
    Ok(Some(token))
}

/// Builds the shared state of a node from its configuration.
pub fn build_state(config: NodeConfig) -> anyhow::Result<SharedState> {
    let metrics = Arc::new(Metrics::new());
    let identity = load_identity(&config)?;
    let reload_metrics = metrics.clone();
    let directory = DirectoryHandle::open(
        config.directory_file.clone(),
        Box::new(move |result| match result {
            Ok(()) => {
                tracing::info!("tenant directory reloaded");
                reload_metrics
                    .directory_reloads
                    .with_label_values(&["ok"])
                    .inc();
            }
            Err(e) => {
                tracing::error!(error = %e, "tenant directory reload failed; keeping the previous one");
                reload_metrics
                    .directory_reloads
                    .with_label_values(&["error"])
                    .inc();
            }
        }),
    )?;
    let auth = AuthService::new(
        auth_secret(config.auth.secret_file.as_deref())?,
        &config.auth,
    );
    let stores = match config.storage.kind.engine() {
        None => StoreRegistry::memory(),
        Some(engine) => {
            let dir = config.data_dir.join("store");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let backend = StorageBackend::open(&dir, engine, config.storage.cache_capacity_bytes)?;
            let c = &config.storage.compaction;
            StoreRegistry::new(backend, Some(config.data_dir.clone()))
                .with_space_guard(dir, config.storage.min_free_bytes)
                .with_compaction(CompactionThresholds {
                    min_keys: c.min_keys,
                    max_bytes: c.max_bytes,
                    target_entries: c.target_entries.max(2),
                })
        }
    }
    .with_database_limit(config.limits.max_databases_per_tenant);
    let opened = stores.open_existing()?;
    tracing::info!(stores = opened, "storage ready");
    let identity = Arc::new(identity);
    let node_id = roles::node_id(&identity);
    let links = if config.upstreams.is_empty() && config.peers.is_empty() {
        None
    } else {
        let options = SessionOptions {
            username: config.name.clone(),
            identity: identity.clone(),
            node_id: node_id.clone(),
            max_attempts: config.sync.max_attempts,
            backoff_base: Duration::from_millis(config.sync.backoff_base_ms),
        };
        Some(Arc::new(Links::from_config(&config, options)?))
    };
    let cache =
        (config.role == Role::Edge).then(|| Arc::new(EdgeCache::new(config.cache.max_bytes)));
    tracing::info!(%node_id, role = config.role.as_str(), "node identity ready");
    let status_token = status_token(config.auth.status_token_file.as_deref())?;
    let limits = Limiters::from_config(&config.limits);
    let body_budget = server::body::BodyBudget::new(config.limits.max_inflight_body_bytes);
    let node = Arc::new(Node {
        storage_health: Default::default(),
        caught_up: Default::default(),
        config,
        identity,
        node_id,
        directory,
        stores,
        metrics,
        links,
        sync_queue: SyncQueue::default(),
        upstream_feeds: UpstreamFeeds::default(),
        cache,
    });
    Ok(Arc::new(AppState {
        node,
        auth,
        limits,
        body_budget,
        status_token,
    }))
}

/// Binds the configured address and serves until `shutdown` resolves.
pub async fn run(
    state: SharedState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(state.node.config.listen)
        .with_context(|| format!("binding {}", state.node.config.listen))?;
    let scheme = if state.node.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // One machine-readable line so that scripts and tests can find an ephemeral port.
    println!("listening on {scheme}://{}", listener.local_addr()?);
    serve(state, listener, shutdown).await
}

/// Serves on a bound listener until `shutdown` resolves, then drains requests, stops the sync
/// loop and flushes the store.
pub async fn serve(
    state: SharedState,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app =
        server::router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let handle = axum_server::Handle::new();
    let scheme = if state.node.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, name = %state.node.config.name, "syncrelay-node listening");
    let shutdown_handle = handle.clone();
    let (stop_sync, sync_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        let _ = stop_sync.send(());
        shutdown_handle.graceful_shutdown(Some(server::SHUTDOWN_GRACE));
    });
    let sync_task = tokio::spawn(crate::roles::replication::run(
        state.node.clone(),
        async move {
            let _ = sync_stopped.await;
        },
    ));
    let storage_watch = tokio::spawn(watch_storage(state.node.clone()));
    let maintenance = tokio::spawn(maintain_stores(state.node.clone()));
    let limits = &state.node.config.limits;
    let acceptor = LimitedAcceptor {
        limits: ConnectionLimits::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            state.node.metrics.clone(),
        ),
    };
    let header_timeout = Duration::from_millis(limits.header_timeout_ms.max(1));
    let metrics = state.node.metrics.clone();
    // Headers must arrive in time (a silent connection, a half-sent request, or an idle
    // keep-alive connection, is closed after the timeout); the body deadline is the body
    // layer's (server::body).
    let configure = |builder: &mut hyper_util::server::conn::auto::Builder<_>| {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(64);
    };
    match &state.node.config.tls {
        Some(tls) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rustls_config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
                    .await
                    .context("loading TLS certificate and key")?;
            tokio::spawn(watch_tls(
                rustls_config.clone(),
                tls.cert_file.clone(),
                tls.key_file.clone(),
            ));
            let tls_acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls_config)
                .handshake_timeout(header_timeout)
                .acceptor(acceptor);
            let mut server = axum_server::from_tcp(listener)
                .acceptor(FirstByteDeadline::new(
                    tls_acceptor,
                    header_timeout,
                    metrics,
                ))
                .handle(handle);
            configure(server.http_builder());
            server.serve(app).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(listener)
                .acceptor(FirstByteDeadline::new(acceptor, header_timeout, metrics))
                .handle(handle);
            // Plain HTTP speaks HTTP/1.1 only, as MindooDB clients do: an h2c connection that
            // opens no stream is not bounded by the header timeout and would hold its place.
            let builder = server.http_builder();
            *builder = std::mem::replace(
                builder,
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()),
            )
            .http1_only();
            configure(builder);
            server.serve(app).await?
        }
    }
    // The sync loop stops between passes; an interrupted pass resumes from its saved cursor.
    let _ = tokio::time::timeout(server::SHUTDOWN_GRACE, sync_task).await;
    storage_watch.abort();
    maintenance.abort();
    state
        .node
        .stores
        .flush_all()
        .await
        .context("flushing the store on shutdown")?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// While the storage refuses writes, probes it every two seconds: the mark is cleared once there is
/// room again, and the storage called wedged when the engine fails reads.
async fn watch_storage(node: SharedNode) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if node.storage_health.writable() {
            continue;
        }
        match node.stores.probe() {
            Ok(()) => {
                node.storage_health.recovered();
                node.metrics.storage_unwritable.set(0);
            }
            Err(e) => {
                tracing::debug!(error = %e, "storage still refuses writes");
                node.storage_health.probe_failed(!e.is_disk_full());
            }
        }
    }
}

/// Runs the stores' upkeep (index compaction) every `storage.compaction.intervalMs`, while the
/// storage takes writes.
async fn maintain_stores(node: SharedNode) {
    let every = Duration::from_millis(node.config.storage.compaction.interval_ms.max(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if node.storage_health.writable() {
            node.stores.maintain_all().await;
        }
    }
}

/// Reloads the certificate when either file changes (cert-manager renewals, kubelet's symlink
/// swap of a mounted Secret): looked at every second, which costs two `stat`s, so that a renewed
/// certificate is served within a second or two of landing. A pair that does not load (say, the
/// key not yet renewed with the certificate) keeps the previous one until the files change again.
async fn watch_tls(config: axum_server::tls_rustls::RustlsConfig, cert: PathBuf, key: PathBuf) {
    use crate::client::ca_bundle::FileStamp;
    let stamp = |p: &Path| FileStamp::of(p);
    let mut last = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(TLS_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now != last {
            match config.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
            last = now;
        }
    }
}

/// How often the serving certificate's files are looked at for a change.
const TLS_RECHECK: Duration = Duration::from_secs(1);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
