//! `syncrelay-operator`: command-line entry point.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "syncrelay-operator",
    version,
    about = "Kubernetes operator for syncrelay relay chains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML, one document per CRD).
    Crd,
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Run {
        /// Only watch this namespace (default: all namespaces).
        #[arg(long, env = "SYNCRELAY_NAMESPACE")]
        namespace: Option<String>,
        /// Log format: text or json.
        #[arg(long, env = "SYNCRELAY_LOG_FORMAT", default_value = "text")]
        log_format: String,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "SYNCRELAY_PROBE_ADDR", default_value = "0.0.0.0:8080")]
        probe_addr: std::net::SocketAddr,
        /// Reconcile only while holding the Lease (needed with more than one replica).
        #[arg(long, env = "SYNCRELAY_LEADER_ELECTION")]
        leader_election: bool,
        /// Namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Image of the node pods whose SyncNode names none (the chart passes its own image, so
        /// nodes run the same build as the operator from the same registry).
        #[arg(long, env = "SYNCRELAY_NODE_IMAGE", default_value = syncrelay_operator::render::workload::DEFAULT_IMAGE)]
        node_image: String,
    },
    /// Check that the operator answers ready and that the API server serves the CRDs (the chart's
    /// `helm test` hook).
    Check {
        /// The operator's readiness URL (its metrics Service).
        #[arg(long)]
        ready_url: String,
        /// Namespace to list SyncChains and SyncNodes in.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", syncrelay_operator::crd::crd_yaml()?);
            Ok(())
        }
        Command::Check {
            ready_url,
            namespace,
        } => {
            tokio::runtime::Runtime::new()?
                .block_on(syncrelay_operator::check::check(&ready_url, &namespace))?;
            Ok(())
        }
        Command::Run {
            namespace,
            log_format,
            probe_addr,
            leader_election,
            lease_namespace,
            node_image,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if log_format == "json" {
                builder.json().init();
            } else {
                builder.init();
            }
            tokio::runtime::Runtime::new()?.block_on(syncrelay_operator::run::run(
                syncrelay_operator::run::Options {
                    namespace,
                    probe_addr,
                    leader_election,
                    lease_namespace,
                    node_image,
                },
            ))
        }
    }
}
