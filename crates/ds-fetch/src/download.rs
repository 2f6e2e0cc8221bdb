//! Streams an answer's body to disk: a temporary file beside the target, the SHA-256
//! computed on the way, verified, then renamed into place, so a reader never sees a
//! partial or unverified model and the model is never held in memory.

use crate::FetchError;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;

/// How often a long download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the body may stall before the download is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Removes the temporary file unless the download completed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `body` to `target` atomically; `expect` is the lowercase hex SHA-256 the
/// content must have. Returns the number of bytes written.
pub(crate) async fn to_file(
    body: Incoming,
    total: Option<u64>,
    target: &Path,
    expect: Option<&str>,
    object: &str,
) -> Result<u64, FetchError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error(dir, e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = TempFile {
        path: dir.join(format!(".{name}.part-{}", std::process::id())),
        keep: false,
    };
    let mut file = tokio::fs::File::create(&temp.path)
        .await
        .map_err(|e| io_error(&temp.path, e))?;

    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut last_report = Instant::now();
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(FetchError::Interrupted(format!(
                    "no data for {}s after {written} bytes",
                    STALL_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| {
                FetchError::Interrupted(format!("reading the body after {written} bytes: {e}"))
            })?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        hasher.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| io_error(&temp.path, e))?;
        written += data.len() as u64;
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(object, bytes = written, total, "downloading");
        }
    }
    if let Some(total) = total.filter(|t| *t != written) {
        return Err(FetchError::Protocol(format!(
            "truncated: {written} of {total} bytes"
        )));
    }
    file.flush().await.map_err(|e| io_error(&temp.path, e))?;
    file.sync_all().await.map_err(|e| io_error(&temp.path, e))?;
    drop(file);

    let got = hex::encode(hasher.finalize());
    if let Some(expected) = expect
        && expected != got
    {
        return Err(FetchError::Checksum {
            expected: expected.to_string(),
            got,
        });
    }
    tokio::fs::rename(&temp.path, target)
        .await
        .map_err(|e| io_error(target, e))?;
    temp.keep = true;
    Ok(written)
}
