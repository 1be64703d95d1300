//! `syncrelay-node`: command-line entry point.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use syncrelay_node::config::{LogFormat, NodeConfig, StorageKind};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::directory::{ServerEntry, UserEntry};
use syncrelay_node::store::engine::EngineKind;
use syncrelay_node::tools;

/// mimalloc instead of the system allocator: ingest and serving allocate per entry on every core,
/// and glibc malloc spent ~14 % of the node's ingest profile in allocation and its arena locks.
/// Built without transparent huge pages (`no_thp`): with them an edge's RSS rose from 137 to 188 MiB
/// for the same load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "syncrelay-node",
    version,
    about = "A MindooDB sync-v5 node for end-to-end-encrypted relay chains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an origin, a relay and an edge on loopback (temporary sled stores) and show Alice's
    /// encrypted notes travelling to Carol through nodes that cannot read them.
    Demo {
        /// Notes Alice writes.
        #[arg(long, default_value_t = 200)]
        entries: usize,
        /// Notes per push.
        #[arg(long, default_value_t = 25)]
        batch: usize,
    },
    /// Run the node. Without flags: an origin on 127.0.0.1:1661 with its store under ./data.
    Serve {
        /// Node configuration (YAML); flags override its values.
        #[arg(long, short, env = "SYNCRELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, e.g. 0.0.0.0:1661 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (store and generated identity).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Tenant directory file (YAML); reloaded when it changes.
        #[arg(long)]
        directory: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
        /// Storage: `memory`, or the on-disk engine of a new data directory (an existing one
        /// keeps the engine it was written with).
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
    },
    /// Pull or push one database between a local store (sled or fjall) and a node, acting as a user or node
    /// whose keys are in --keys. Repeated runs are incremental (the cursor is kept locally).
    Sync {
        #[arg(value_enum)]
        direction: DirectionArg,
        /// Base URL of the node, e.g. https://relay.example:1661
        #[arg(long)]
        url: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        db: String,
        /// Store kind.
        #[arg(long, default_value = "docs")]
        kind: String,
        /// Folder of the local store.
        #[arg(long)]
        local: PathBuf,
        /// Engine of a new local store (an existing folder keeps the engine it was written with).
        #[arg(long, value_enum)]
        engine: Option<EngineArg>,
        /// Folder with signing.pem and encryption.pem (as written by keygen).
        #[arg(long)]
        keys: PathBuf,
        /// Username the keys are registered under in the node's directory.
        #[arg(long)]
        username: String,
        /// PEM bundle of CAs to trust for an https URL.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Back up every database a node carries (as listed in its /status) into --dir: an incremental
    /// pull into DIR/current with the node's own identity, then a snapshot DIR/snapshots/<ms>
    /// with manifest.json; only the newest --keep snapshots are kept. Prints the manifest (JSON).
    Backup {
        /// Base URL of the node, e.g. http://origin.acme.svc.cluster.local:1661
        #[arg(long)]
        url: String,
        /// Backup folder (created when missing).
        #[arg(long)]
        dir: PathBuf,
        /// Snapshots to keep.
        #[arg(long, default_value_t = 7)]
        keep: usize,
        /// Folder with signing.pem and encryption.pem of the identity to act as.
        #[arg(long)]
        keys: PathBuf,
        /// Name that identity has in the node's directory (a node: its trusted-server name).
        #[arg(long)]
        username: String,
        /// PEM bundle of CAs to trust for an https URL.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Also write the run's summary (JSON: time, entries, stores, snapshot, or error) here,
        /// e.g. /dev/termination-log, where Kubernetes keeps it for the operator to read.
        #[arg(long)]
        summary_file: Option<PathBuf>,
    },
    /// Push a snapshot taken by `backup` into a node (e.g. an origin whose volume was lost).
    /// Prints the snapshot's manifest (JSON).
    Restore {
        /// Base URL of the node.
        #[arg(long)]
        url: String,
        /// A snapshot folder, or a backup folder (its newest snapshot is used).
        #[arg(long)]
        from: PathBuf,
        /// Folder with signing.pem and encryption.pem of the identity to act as.
        #[arg(long)]
        keys: PathBuf,
        /// Name that identity has in the node's directory.
        #[arg(long)]
        username: String,
        /// PEM bundle of CAs to trust for an https URL.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Print a node's stores, links, lag and cache as tables (from its /status).
    Status {
        /// Base URL of the node.
        url: String,
    },
    /// Generate an Ed25519 signing key and an RSA-3072 encryption key (PKCS#8 PEM, mode 0600) and
    /// print the matching directory entry.
    Keygen {
        /// Folder for signing.pem and encryption.pem.
        #[arg(long, short)]
        out: PathBuf,
        /// Name in the directory entry (e.g. CN=alice/O=acme).
        #[arg(long, default_value = "CN=syncrelay-node")]
        name: String,
        /// Print a trustedServers entry instead of a users entry.
        #[arg(long)]
        server: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Pull,
    Push,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Sled,
    Fjall,
}

#[derive(Clone, Copy, ValueEnum)]
enum StorageArg {
    Sled,
    Fjall,
    Memory,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo { entries, batch } => {
            // Quiet logs: the demo tells its own story on stdout.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(syncrelay_node::demo::run(
                syncrelay_node::demo::DemoOptions { entries, batch },
            ))
        }
        Command::Serve {
            config,
            listen,
            data,
            directory,
            log_format,
            storage,
        } => {
            let mut cfg = match &config {
                Some(path) => NodeConfig::load(path)?,
                None => NodeConfig::default(),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data {
                cfg.data_dir = d;
            }
            if let Some(d) = directory {
                cfg.directory_file = Some(d);
            }
            if let Some(s) = storage {
                cfg.storage.kind = match s {
                    StorageArg::Sled => StorageKind::Sled,
                    StorageArg::Fjall => StorageKind::Fjall,
                    StorageArg::Memory => StorageKind::Memory,
                };
            }
            if let Some(f) = log_format {
                cfg.log_format = match f {
                    LogFormatArg::Text => LogFormat::Text,
                    LogFormatArg::Json => LogFormat::Json,
                };
            }
            cfg.validate()?;
            init_logging(cfg.log_format);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let state = syncrelay_node::node::build_state(cfg)?;
                syncrelay_node::node::run(state, syncrelay_node::node::shutdown_signal()).await
            })
        }
        Command::Sync {
            direction,
            url,
            tenant,
            db,
            kind,
            local,
            engine,
            keys,
            username,
            ca_file,
        } => {
            init_logging(LogFormat::Text);
            let kind = syncrelay_node::wire::StoreKind::parse(&kind)
                .with_context(|| format!("unknown store kind {kind} (docs or attachments)"))?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(tools::sync(tools::SyncArgs {
                direction: match direction {
                    DirectionArg::Pull => tools::Direction::Pull,
                    DirectionArg::Push => tools::Direction::Push,
                },
                url: &url,
                tenant: &tenant,
                db: &db,
                kind,
                local: &local,
                engine: match engine {
                    Some(EngineArg::Sled) => EngineKind::Sled,
                    Some(EngineArg::Fjall) => EngineKind::Fjall,
                    None => EngineKind::default(),
                },
                keys: &keys,
                username: &username,
                ca_file: ca_file.as_deref(),
            }))
        }
        Command::Backup {
            url,
            dir,
            keep,
            keys,
            username,
            ca_file,
            summary_file,
        } => {
            use syncrelay_node::backup::RunSummary;
            init_logging(LogFormat::Text);
            let access = syncrelay_node::backup::Access {
                url: &url,
                keys: &keys,
                username: &username,
                ca_file: ca_file.as_deref(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(syncrelay_node::backup::backup(&access, &dir, keep));
            let summary = match &result {
                Ok(manifest) => RunSummary::of(manifest),
                Err(e) => RunSummary::failed(&format!("{e:#}")),
            };
            if let Some(path) = &summary_file {
                if let Err(e) = std::fs::write(path, summary.to_json()) {
                    tracing::warn!(path = %path.display(), error = %e, "could not write the summary");
                }
            }
            let manifest = result?;
            println!("{}", serde_json::to_string(&manifest)?);
            Ok(())
        }
        Command::Restore {
            url,
            from,
            keys,
            username,
            ca_file,
        } => {
            init_logging(LogFormat::Text);
            let snapshot = syncrelay_node::backup::resolve_snapshot(&from)?;
            let access = syncrelay_node::backup::Access {
                url: &url,
                keys: &keys,
                username: &username,
                ca_file: ca_file.as_deref(),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let manifest = runtime.block_on(syncrelay_node::backup::restore(&access, &snapshot))?;
            println!("{}", serde_json::to_string(&manifest)?);
            Ok(())
        }
        Command::Status { url } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(tools::status(&url))
        }
        Command::Keygen { out, name, server } => {
            eprintln!("generating Ed25519 and RSA-3072 keys...");
            let identity = Identity::generate()?;
            identity
                .save(&out)
                .with_context(|| format!("writing keys to {}", out.display()))?;
            eprintln!(
                "private keys written to {}/signing.pem and encryption.pem",
                out.display()
            );
            let entry = if server {
                serde_yaml::to_string(&vec![ServerEntry {
                    name,
                    signing_public_key: identity.signing_public_pem.clone(),
                    encryption_public_key: identity.encryption_public_pem.clone(),
                }])?
            } else {
                serde_yaml::to_string(&vec![UserEntry {
                    username: name,
                    signing_public_key: identity.signing_public_pem.clone(),
                    encryption_public_key: identity.encryption_public_pem.clone(),
                    revoked: false,
                }])?
            };
            let section = if server { "trustedServers" } else { "users" };
            println!("# add under tenants.<tenant>.{section} in the directory file:\n{entry}");
            Ok(())
        }
    }
}
