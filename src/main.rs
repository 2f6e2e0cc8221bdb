//! The `ds` binary: parses arguments and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ds::main_with(ds::Cli::parse())
}
