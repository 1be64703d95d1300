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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", syncrelay_operator::crd::crd_yaml()?);
            Ok(())
        }
    }
}
