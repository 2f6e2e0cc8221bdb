//! `ds deployer create|ls|get|rm|rotate-token|install`.

use super::client::{self, request, status_error};
use super::output::{self, DeployerView, OutputFormat, fields, print};
use super::{CliError, DeployerArgs, DeployerCommand, config};
use ds_core::duration::format as format_duration;
use ds_core::proto;
use serde::Serialize;
use tonic::Code;

/// What `ds deployer create` prints: the token is in the only copy there will ever be.
#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    name: &'a str,
    token: &'a str,
}

/// What `ds deployer rotate-token` prints.
#[derive(Serialize)]
struct Rotated<'a> {
    token: &'a str,
    previous_expires_at: &'a str,
}

/// What `ds deployer install` prints with `-o json|yaml`.
#[derive(Serialize)]
struct Install<'a> {
    command: &'a str,
    url: &'a str,
    expires_at: &'a str,
}

/// What `rm` prints with `-o json|yaml`.
#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a str,
    deleted: bool,
}

pub async fn run(args: DeployerArgs) -> Result<(), CliError> {
    let format = args.global.output;
    // Check what can be checked before dialing.
    if let DeployerCommand::Create { name } = &args.command {
        ds_core::validate_deployer_name(name)?;
    }
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    match args.command {
        DeployerCommand::Create { name } => {
            let response = control
                .create_deployer(request(proto::CreateDeployerRequest { name }))
                .await
                .map_err(err)?
                .into_inner();
            let deployer = response.deployer.unwrap_or_default();
            let created = Created {
                id: &deployer.id,
                name: &deployer.name,
                token: &response.token,
            };
            print(format, &created, || {
                fields(&[
                    ("ID", deployer.id.clone()),
                    ("Name", deployer.name.clone()),
                    ("Token", response.token.clone()),
                ])
            })?;
            if format == OutputFormat::Table {
                eprintln!(
                    "Save the token now: it is shown only once. Install the agent with `ds deployer install {}`.",
                    deployer.name
                );
            }
        }
        DeployerCommand::Ls => {
            let response = control
                .list_deployers(request(proto::ListDeployersRequest {}))
                .await
                .map_err(err)?
                .into_inner();
            let views: Vec<DeployerView> =
                response.deployers.iter().map(DeployerView::from).collect();
            if views.is_empty() && format == OutputFormat::Table {
                eprintln!("No deployers found. Register one with `ds deployer create NAME`.");
            } else {
                print(format, &views, || output::deployers_table(&views))?;
            }
        }
        DeployerCommand::Get { deployer } => {
            let found = control
                .get_deployer(request(proto::GetDeployerRequest { deployer }))
                .await
                .map_err(err)?
                .into_inner();
            let view = DeployerView::from(&found);
            print(format, &view, || output::deployer_fields(&view))?;
        }
        DeployerCommand::Rm { deployer } => {
            let response = control
                .delete_deployer(request(proto::DeleteDeployerRequest {
                    deployer: deployer.clone(),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let deleted = Deleted {
                id: &response.id,
                deleted: true,
            };
            print(format, &deleted, || {
                format!(
                    "deployer {deployer} deleted (its deployments are removed and its tokens revoked)"
                )
            })?;
        }
        DeployerCommand::RotateToken { deployer, overlap } => {
            let overlap_seconds = u32::try_from(overlap.as_secs()).unwrap_or(u32::MAX);
            let response = control
                .rotate_deployer_token(request(proto::RotateDeployerTokenRequest {
                    deployer: deployer.clone(),
                    // 0 asks for the gateway's default: ask for one second instead so
                    // `--overlap 0s` means "revoke the old token (almost) now".
                    overlap_seconds: overlap_seconds.max(1),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let rotated = Rotated {
                token: &response.token,
                previous_expires_at: &response.previous_expires_at,
            };
            print(format, &rotated, || {
                fields(&[
                    ("Token", response.token.clone()),
                    (
                        "Previous token valid until",
                        output_or_none(&response.previous_expires_at),
                    ),
                ])
            })?;
            if format == OutputFormat::Table {
                eprintln!(
                    "Save the new token now: it is shown only once. Update the agent's token within {}.",
                    format_duration(overlap)
                );
            }
        }
        DeployerCommand::Install {
            deployer,
            ttl,
            agent_namespace,
            cluster_name,
            create_namespaces,
            target_namespaces,
        } => {
            let ttl_seconds = ttl.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX));
            let response = control
                .create_install_code(request(proto::CreateInstallCodeRequest {
                    deployer: deployer.clone(),
                    ttl_seconds,
                    namespace: agent_namespace.unwrap_or_default(),
                    create_namespaces,
                    target_namespaces,
                    cluster_name: cluster_name.unwrap_or_default(),
                }))
                .await
                .map_err(|status| {
                    if status.code() == Code::Unimplemented {
                        CliError::Unimplemented {
                            url: url.clone(),
                            what: "install links".into(),
                            hint: format!(
                                "deploy the agent by hand with the token from `ds deployer create {deployer}` (or `rotate-token`)"
                            ),
                        }
                    } else {
                        status_error(status, &url)
                    }
                })?
                .into_inner();
            let command = format!("kubectl apply -f \"{}\"", response.url);
            let install = Install {
                command: &command,
                url: &response.url,
                expires_at: &response.expires_at,
            };
            print(format, &install, || command.clone())?;
            if format == OutputFormat::Table && !response.expires_at.is_empty() {
                eprintln!(
                    "The link works once, until {}; run it against the target cluster.",
                    response.expires_at
                );
            }
        }
    }
    Ok(())
}

fn output_or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}
