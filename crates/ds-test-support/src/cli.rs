//! The `ds` binary as a process in tests: its command line, kept apart from the user's
//! own configuration, and what a run printed. The binary is the test crate's (only an
//! integration test knows `CARGO_BIN_EXE_ds`), so callers pass its path.

use serde_json::Value;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// What a finished `ds` run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "ds failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts success and parses stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts a failure; returns stderr.
    pub fn failed(&self) -> &str {
        assert_ne!(self.code, Some(0), "ds succeeded: {}", self.stdout);
        &self.stderr
    }

    /// Asserts a failure reported as exactly one `error: …` line; returns that line.
    pub fn one_line_error(&self) -> &str {
        let lines: Vec<&str> = self.failed().lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        assert!(
            !self.stderr.contains("Status {"),
            "debug dump: {}",
            self.stderr
        );
        lines[0]
    }
}

/// `BIN ARGS` with no gateway, key or CA in the environment and `config` as its config
/// file, so the user's own settings never leak into a test.
pub fn bare(bin: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("DS_GATEWAY")
        .env_remove("DS_API_KEY")
        .env_remove("DS_CA_CERT")
        .env("DS_CONFIG", config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end, within `deadline`.
pub async fn output(mut cmd: Command, deadline: Duration) -> Run {
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .expect("ds finishes")
        .expect("ds runs");
    Run::from(out)
}
