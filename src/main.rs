//! The `ds` binary: parses arguments and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ds_deployer::main_with(ds_deployer::Cli::parse())
}
