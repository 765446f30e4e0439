//! `cloudctl`: the operator CLI of the cloud platform.

mod flags;
mod output;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cloudctl", version, about = "Operate the cloud platform: run it locally, manage environments, promote and roll back")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine with embedded defaults (SQLite, no external servers).
    Up(up::UpArgs),
    /// Feature flags: read and verify the hash-chained audit trail of flag changes.
    Flags(flags::FlagsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Flags(args) => flags::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cloudctl: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
