//! The `autofollow` command: parses the command line and runs it on one runtime.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = autofollow::cli::Cli::parse();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(autofollow::cli::run(cli)),
        Err(e) => {
            eprintln!("autofollow: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}
