//! `ds audit ls`: the gateway's audit log, every page of it, oldest first.

use super::client::{self, request, status_error};
use super::output::{self, AuditView, print};
use super::{AuditArgs, AuditCommand, CliError, config};
use chrono::{SecondsFormat, Utc};
use ds_core::proto;

/// `--since`: an RFC 3339 time as given, or a duration back from now.
fn since(value: &str) -> Result<String, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    let ago = ds_core::duration::parse(value).map_err(|_| CliError::BadFlag {
        flag: "--since".into(),
        value: value.into(),
        reason: "must be a duration back from now (e.g. 1h, 30m) or an RFC 3339 time (e.g. 2026-12-01T10:00:00Z)".into(),
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| CliError::BadFlag {
        flag: "--since".into(),
        value: value.into(),
        reason: "too long ago".into(),
    })?;
    Ok((Utc::now() - ago).to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let format = args.global.output;
    let AuditCommand::Ls {
        since: since_flag,
        actor,
        deployer,
    } = args.command;
    let since = since_flag.as_deref().map(since).transpose()?;
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let mut entries: Vec<AuditView> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = control
            .list_audit(request(proto::ListAuditRequest {
                since: since.clone().unwrap_or_default(),
                actor: actor.clone().unwrap_or_default(),
                deployer: deployer.clone().unwrap_or_default(),
                limit: 0,
                page_token: page_token.clone(),
            }))
            .await
            .map_err(|status| status_error(status, &url))?
            .into_inner();
        entries.extend(page.entries.iter().map(AuditView::from));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if entries.is_empty() && format.is_human() {
        eprintln!("No audit entries found.");
        return Ok(());
    }
    print(format, &entries, || output::audit_table(&entries))
}

#[cfg(test)]
mod tests {
    use super::since;

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        assert_eq!(
            since("2026-12-01T10:00:00+01:00").unwrap(),
            "2026-12-01T09:00:00.000Z"
        );
        let an_hour_ago = chrono::DateTime::parse_from_rfc3339(&since("1h").unwrap()).unwrap();
        let age = chrono::Utc::now() - an_hour_ago.with_timezone(&chrono::Utc);
        assert!(age >= chrono::Duration::minutes(59), "{age}");
        let err = since("yesterday").unwrap_err().to_string();
        assert!(err.contains("--since"), "{err}");
    }
}
