//! `ds version`: the client's build version, and the gateway's (GetVersion).

use super::client::{self, request, status_error};
use super::output::{OutputFormat, print_text};
use super::{CliError, VersionArgs, config};
use ds_core::proto;
use serde::Serialize;

/// This binary's version.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `-o json|yaml` prints; `gateway_version` is null when it could not be asked.
#[derive(Serialize)]
struct Versions {
    client_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    gateway_version: Option<String>,
}

pub async fn run(args: VersionArgs) -> Result<(), CliError> {
    let format = args.global.output;
    let (gateway, answer) = if args.client {
        (None, None)
    } else {
        match gateway_version(&args).await {
            Ok((url, version)) => (Some(url), Some(Ok(version))),
            Err(e) => (None, Some(Err(e))),
        }
    };
    let gateway_version = match &answer {
        Some(Ok(v)) => Some(v.clone()),
        _ => None,
    };
    let versions = Versions {
        client_version: CLIENT_VERSION,
        gateway,
        gateway_version,
    };
    // The client's version is printed whatever the gateway does, as kubectl does.
    let text = match format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(&versions).map_err(|e| CliError::Output(e.to_string()))?
        }
        OutputFormat::Yaml => {
            serde_saphyr::to_string(&versions).map_err(|e| CliError::Output(e.to_string()))?
        }
        _ => {
            let mut text = format!("Client Version: {CLIENT_VERSION}\n");
            if let Some(v) = &versions.gateway_version {
                text.push_str(&format!("Gateway Version: {v}\n"));
            }
            text
        }
    };
    print_text(&text)?;
    match answer {
        Some(Err(e)) => Err(CliError::GatewayVersion(Box::new(e))),
        _ => Ok(()),
    }
}

async fn gateway_version(args: &VersionArgs) -> Result<(String, String), CliError> {
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let response = control
        .get_version(request(proto::GetVersionRequest {}))
        .await
        .map_err(|status| status_error(status, &url))?
        .into_inner();
    Ok((url, response.version))
}
