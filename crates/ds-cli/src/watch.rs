//! `ds deployment ls -w` / `get -w`: the table, then one line per change until Ctrl-C,
//! as kubectl's `-w` (`-o json|yaml|name`: one document or name per change).

use super::CliError;
use super::client::{self, Control, status_error};
use super::output::{self, DeploymentView, OutputFormat, print_text};
use ds_core::proto;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::Code;

/// How often `ls -w` lists again.
///
/// `ls -w` polls the list instead of holding a server stream: a poll needs nothing new
/// from the gateway, survives gateway restarts and load-balanced replicas without resume
/// tokens (each poll is a complete, consistent answer), cannot miss a change by lagging
/// behind an in-process broadcast, and costs the gateway nothing between polls. The price
/// is up to this much delay, which a person watching a table does not notice.
const LIST_POLL: Duration = Duration::from_secs(2);

/// Pause before reopening a status stream the gateway ended or lost.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Prints views as they change; the table's columns keep the widths of the first print.
struct Lines {
    format: OutputFormat,
    widths: Option<Vec<usize>>,
    /// What was last printed per deployment ID, to print only changes.
    last: HashMap<String, Vec<String>>,
}

impl Lines {
    fn new(format: OutputFormat) -> Self {
        Self {
            format,
            widths: None,
            last: HashMap::new(),
        }
    }

    /// What counts as a change: the visible columns but the age (which changes by itself)
    /// and the revisions.
    fn key(view: &DeploymentView) -> Vec<String> {
        let mut key = output::deployment_row(view, true);
        key.remove(6);
        key.push(view.status.applied_revision.to_string());
        key.push(view.status.last_error.clone().unwrap_or_default());
        key
    }

    /// Prints the views that changed since their last print (all, the first time).
    fn changed(&mut self, views: &[DeploymentView]) -> Result<(), CliError> {
        let fresh: Vec<&DeploymentView> = views
            .iter()
            .filter(|v| {
                let key = Self::key(v);
                self.last.insert(v.id.clone(), key.clone()).as_ref() != Some(&key)
            })
            .collect();
        self.print(&fresh)
    }

    fn print(&mut self, views: &[&DeploymentView]) -> Result<(), CliError> {
        let wide = self.format == OutputFormat::Wide;
        let mut text = String::new();
        match self.format {
            OutputFormat::Table | OutputFormat::Wide => {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| output::deployment_row(v, wide))
                    .collect();
                let widths = self.widths.get_or_insert_with(|| {
                    let headers = output::deployment_headers(wide);
                    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
                    for row in &rows {
                        for (w, cell) in widths.iter_mut().zip(row) {
                            *w = (*w).max(cell.chars().count());
                        }
                    }
                    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
                    text.push_str(&aligned(&header, &widths));
                    widths
                });
                for row in &rows {
                    text.push_str(&aligned(row, widths));
                }
            }
            OutputFormat::Name => {
                for v in views {
                    text.push_str(&format!("deployment/{}\n", v.name));
                }
            }
            OutputFormat::Json => {
                for v in views {
                    text.push_str(
                        &serde_json::to_string_pretty(v)
                            .map_err(|e| CliError::Output(e.to_string()))?,
                    );
                    text.push('\n');
                }
            }
            OutputFormat::Yaml => {
                for v in views {
                    text.push_str("---\n");
                    text.push_str(
                        &serde_saphyr::to_string(v).map_err(|e| CliError::Output(e.to_string()))?,
                    );
                }
            }
        }
        if text.is_empty() {
            return Ok(());
        }
        print_text(&text)
    }
}

/// One table line padded to `widths` (longer cells just push the rest right).
fn aligned(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    let last = row.len().saturating_sub(1);
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i < last {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            line.push_str(&" ".repeat(pad));
        }
    }
    line.push('\n');
    line
}

/// `ls -w`: lists every [`LIST_POLL`] and prints what changed; a deployment that went
/// away is printed once more with the status `Deleted`.
///
/// # Errors
/// The gateway's refusal; an unreachable gateway is retried.
pub async fn list(
    control: &mut Control,
    url: &str,
    req: proto::ListDeploymentsRequest,
    format: OutputFormat,
) -> Result<(), CliError> {
    let mut lines = Lines::new(format);
    let mut known: BTreeMap<String, DeploymentView> = BTreeMap::new();
    let mut first = true;
    loop {
        match client::list_all_deployments(control, req.clone(), |d| DeploymentView::from(&d)).await
        {
            Ok(views) => {
                let mut gone: Vec<DeploymentView> = Vec::new();
                let now: BTreeMap<String, DeploymentView> =
                    views.iter().map(|v| (v.id.clone(), v.clone())).collect();
                for (id, old) in &known {
                    if !now.contains_key(id) {
                        let mut deleted = old.clone();
                        deleted.status.phase = "Deleted";
                        gone.push(deleted);
                        lines.last.remove(id);
                    }
                }
                if first && views.is_empty() && format.is_human() {
                    eprintln!("No deployments found (yet); watching.");
                }
                first = false;
                lines.changed(&views)?;
                lines.print(&gone.iter().collect::<Vec<_>>())?;
                known = now;
            }
            Err(status) if transient(&status) => {}
            Err(status) => return Err(status_error(status, url)),
        }
        tokio::time::sleep(LIST_POLL).await;
    }
}

/// `get -w`: follows WatchDeploymentStatus (reopened when the gateway ends or loses it)
/// and prints the deployment when it changes; ends when it is deleted.
///
/// # Errors
/// The gateway's refusal (not found, ambiguous name).
pub async fn get(
    control: &mut Control,
    url: &str,
    mut selector: proto::GetDeploymentRequest,
    format: OutputFormat,
) -> Result<(), CliError> {
    let mut lines = Lines::new(format);
    let mut last: Option<DeploymentView> = None;
    loop {
        let mut stream = match control.watch_deployment_status(selector.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) if transient(&status) => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            Err(status) if status.code() == Code::NotFound && last.is_some() => {
                return deleted(&mut lines, last);
            }
            Err(status) => return Err(status_error(status, url)),
        };
        loop {
            match stream.message().await {
                Ok(Some(view)) => {
                    let view = DeploymentView::from(&view);
                    // From now on the ID: a name could come to mean another deployment.
                    selector = proto::GetDeploymentRequest {
                        deployment: view.id.clone(),
                        ..Default::default()
                    };
                    lines.changed(std::slice::from_ref(&view))?;
                    last = Some(view);
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::NotFound && last.is_some() => {
                    return deleted(&mut lines, last);
                }
                Err(status) if transient(&status) => break,
                Err(status) => return Err(status_error(status, url)),
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

fn deleted(lines: &mut Lines, last: Option<DeploymentView>) -> Result<(), CliError> {
    if let Some(mut view) = last {
        view.status.phase = "Deleted";
        lines.print(&[&view])?;
    }
    Ok(())
}

/// Errors after which asking again may help (gateway restart, dropped link).
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}
