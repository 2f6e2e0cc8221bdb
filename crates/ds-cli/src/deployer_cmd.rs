//! `ds deployer create|update|ls|get|rm|rotate-token|install` (`grant|revoke` in `teams_cmd`).

use super::client::{self, request, status_error};
use super::output::{self, DeployerView, fields, print};
use super::{CliError, DeployerArgs, DeployerCommand, config, teams_cmd};
use ds_core::duration::format as format_duration;
use ds_core::proto;
use serde::Serialize;
use std::time::Duration;
use tonic::Code;

/// What `ds deployer create` prints: the token is in the only copy there will ever be.
#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    name: &'a str,
    stage: &'a str,
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
    deployments_deleted: u32,
    /// `--orphan`: the command that removes the objects left in the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    cleanup: Option<&'a str>,
}

/// How often `rm --cascade` asks the gateway whether the agent is done.
const CASCADE_POLL: Duration = Duration::from_millis(500);

pub async fn run(args: DeployerArgs) -> Result<(), CliError> {
    let format = args.global.output;
    if let DeployerCommand::Grant { group, .. } | DeployerCommand::Revoke { group, .. } =
        &args.command
    {
        ds_core::validate::validate_group_name("--group", group)?;
    }
    // Check what can be checked before dialing.
    if let DeployerCommand::Create { name, .. } = &args.command {
        ds_core::validate_deployer_name(name)?;
    }
    if let DeployerCommand::Update { deployer, stage } = &args.command
        && stage.is_none()
    {
        return Err(CliError::NothingToUpdateDeployer(deployer.clone()));
    }
    let remap = match &args.command {
        DeployerCommand::Remap(remap) => Some(super::promote_cmd::remap_request(remap)?),
        _ => None,
    };
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    match args.command {
        DeployerCommand::Create { name, stage } => {
            let response = control
                .create_deployer(request(proto::CreateDeployerRequest {
                    name,
                    stage: stage.unwrap_or_default(),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let deployer = response.deployer.unwrap_or_default();
            let created = Created {
                id: &deployer.id,
                name: &deployer.name,
                stage: &deployer.stage,
                token: &response.token,
            };
            print(format, &created, || {
                fields(&[
                    ("ID", deployer.id.clone()),
                    ("Name", deployer.name.clone()),
                    ("Stage", deployer.stage.clone()),
                    ("Token", response.token.clone()),
                ])
            })?;
            if format.is_human() {
                eprintln!(
                    "Save the token now: it is shown only once. Install the agent with `ds deployer install {}`.",
                    deployer.name
                );
            }
        }
        DeployerCommand::Update { deployer, stage } => {
            let updated = control
                .update_deployer(request(proto::UpdateDeployerRequest { deployer, stage }))
                .await
                .map_err(err)?
                .into_inner();
            let view = DeployerView::from(&updated);
            let one = std::slice::from_ref(&view);
            output::print_resource(
                format,
                &view,
                || output::deployer_fields(&view),
                || output::deployers_wide_table(one),
                || output::deployer_names(one),
            )?;
        }
        DeployerCommand::Ls => {
            let response = control
                .list_deployers(request(proto::ListDeployersRequest {}))
                .await
                .map_err(err)?
                .into_inner();
            let views: Vec<DeployerView> =
                response.deployers.iter().map(DeployerView::from).collect();
            if views.is_empty() && format.is_human() {
                eprintln!("No deployers found. Register one with `ds deployer create NAME`.");
            } else {
                output::print_resource(
                    format,
                    &views,
                    || output::deployers_table(&views),
                    || output::deployers_wide_table(&views),
                    || output::deployer_names(&views),
                )?;
            }
        }
        DeployerCommand::Remap(_) => {
            let req = remap.expect("built above for remap");
            let updated = control
                .set_deployer_remap(request(req))
                .await
                .map_err(err)?
                .into_inner();
            let view = DeployerView::from(&updated);
            let one = std::slice::from_ref(&view);
            output::print_resource(
                format,
                &view,
                || {
                    format!(
                        "deployer {} remapping: {}\n(applies to deployments created on or promoted to it from now on)",
                        view.name,
                        output::remap_text(view.remap.as_ref())
                    )
                },
                || output::deployers_wide_table(one),
                || output::deployer_names(one),
            )?;
        }
        DeployerCommand::Get { deployer } => {
            let found = control
                .get_deployer(request(proto::GetDeployerRequest { deployer }))
                .await
                .map_err(err)?
                .into_inner();
            let view = DeployerView::from(&found);
            let one = std::slice::from_ref(&view);
            output::print_resource(
                format,
                &view,
                || output::deployer_fields(&view),
                || output::deployers_wide_table(one),
                || output::deployer_names(one),
            )?;
        }
        DeployerCommand::Rm {
            deployer,
            cascade,
            orphan,
            timeout,
        } => {
            let mode = if cascade {
                proto::DeleteMode::Cascade
            } else if orphan {
                proto::DeleteMode::Orphan
            } else {
                proto::DeleteMode::Unspecified
            };
            let delete = |control: &mut client::Control| {
                let mut control = control.clone();
                let deployer = deployer.clone();
                async move {
                    control
                        .delete_deployer(request(proto::DeleteDeployerRequest {
                            deployer,
                            mode: mode as i32,
                        }))
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            let response = match delete(&mut control).await {
                Ok(r) => r,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    // Say it with the flags that settle it.
                    let found = control
                        .get_deployer(request(proto::GetDeployerRequest {
                            deployer: deployer.clone(),
                        }))
                        .await
                        .map_err(err)?
                        .into_inner();
                    return Err(CliError::DeployerHasDeployments {
                        name: found.name,
                        count: found.deployments,
                    });
                }
                Err(status) => return Err(err(status)),
            };
            let response = if cascade {
                follow_cascade(&deployer, response, timeout, || delete(&mut control))
                    .await
                    .map_err(|e| match e {
                        CascadeError::Status(status) => err(status),
                        CascadeError::Cli(e) => e,
                    })?
            } else {
                response
            };
            let cleanup = ds_core::ownership::cleanup_command(&response.id);
            let deleted = Deleted {
                id: &response.id,
                deleted: response.deleted,
                deployments_deleted: response.deployments_deleted,
                cleanup: orphan.then_some(cleanup.as_str()),
            };
            print(format, &deleted, || {
                if orphan {
                    cleanup.clone()
                } else {
                    format!("deployer {deployer} deleted (its tokens are revoked)")
                }
            })?;
            if orphan && format.is_human() {
                eprintln!(
                    "deployer {deployer} deleted and its tokens revoked; the objects of its {} deployments stay in the cluster: the command above removes them",
                    response.deployments_deleted
                );
            }
        }
        DeployerCommand::Grant {
            deployer,
            group,
            role,
        } => teams_cmd::grant(&mut control, &url, format, deployer, group, Some(role)).await?,
        DeployerCommand::Revoke { deployer, group } => {
            teams_cmd::grant(&mut control, &url, format, deployer, group, None).await?;
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
            if format.is_human() {
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
            if let Some(host) = loopback_host(&response.url) {
                // The manifest points the agent at this address: from a pod, loopback is
                // the pod itself.
                eprintln!(
                    "warning: the gateway's public URL is a loopback address ({host}): an agent in a cluster cannot reach it; start the gateway with --public-url set to an address the cluster reaches"
                );
            }
            if format.is_human() && !response.expires_at.is_empty() {
                eprintln!(
                    "The link works once, until {}; run it against the target cluster.",
                    response.expires_at
                );
            }
        }
    }
    Ok(())
}

enum CascadeError {
    Status(tonic::Status),
    Cli(CliError),
}

/// Asks again (`again`) until the gateway says the deployer is deleted, printing progress
/// to stderr when it changes, for at most `timeout`.
async fn follow_cascade<F, Fut>(
    deployer: &str,
    first: proto::DeleteDeployerResponse,
    timeout: Duration,
    mut again: F,
) -> Result<proto::DeleteDeployerResponse, CascadeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<proto::DeleteDeployerResponse, tonic::Status>>,
{
    let start = tokio::time::Instant::now();
    let deleted = first.deployments_deleted;
    if deleted > 0 {
        eprintln!("deleted {deleted} deployments of deployer {deployer}");
    }
    let mut response = first;
    let mut shown = String::new();
    while !response.deleted {
        let progress = cascade_progress(&response);
        if progress != shown {
            eprintln!(
                "waiting for the agent of deployer {deployer} to remove their objects: {progress}"
            );
            shown = progress;
        }
        if start.elapsed() >= timeout {
            return Err(CascadeError::Cli(CliError::CascadeTimeout {
                name: deployer.to_string(),
                timeout: format_duration(timeout),
                progress: shown,
            }));
        }
        tokio::time::sleep(CASCADE_POLL).await;
        let next = again().await.map_err(CascadeError::Status)?;
        let total = response.deployments_deleted + next.deployments_deleted;
        response = proto::DeleteDeployerResponse {
            deployments_deleted: total,
            ..next
        };
    }
    eprintln!("the agent of deployer {deployer} removed every object it had made");
    Ok(response)
}

/// One line of `rm --cascade` progress.
fn cascade_progress(r: &proto::DeleteDeployerResponse) -> String {
    match (r.objects_left, r.agent_connected) {
        (Some(n), _) => format!("{n} objects left"),
        (None, true) => "the agent has not reported since the deletions".to_string(),
        (None, false) if r.agent_last_seen.is_empty() => "no agent connected".to_string(),
        (None, false) => format!("no agent connected (last seen {})", r.agent_last_seen),
    }
}

fn output_or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.into()
    }
}

/// The host of `url` when it is a loopback address (`localhost`, 127.0.0.0/8, `::1`).
fn loopback_host(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let loopback = match parsed.host()? {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    loopback.then(|| parsed.host_str().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn loopback_install_urls_are_recognised() {
        assert_eq!(
            loopback_host("http://127.0.0.1:8800/install/x.yaml").as_deref(),
            Some("127.0.0.1")
        );
        assert!(loopback_host("http://localhost:8800/install/x.yaml").is_some());
        assert!(loopback_host("http://[::1]:8800/install/x.yaml").is_some());
        assert!(loopback_host("https://gw.example.com/install/x.yaml").is_none());
        assert!(loopback_host("http://10.0.0.5:8800/install/x.yaml").is_none());
    }
}
