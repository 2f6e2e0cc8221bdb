//! `ds deployment create|ls|get|update|rm` (and the dispatch of `logs|describe`).

use super::client::{self, Control, request, status_error};
use super::output::{self, DeploymentView, OutputFormat, print};
use super::{
    CliError, CreateArgs, DeploymentArgs, DeploymentCommand, SelectArgs, UpdateArgs, config, flags,
    wait, watch,
};
use ds_core::DeploymentSpec;
use ds_core::proto;
use serde::Serialize;

/// What `rm` prints with `-o json|yaml`.
#[derive(Serialize)]
struct Deleted<'a> {
    id: &'a str,
    deleted: bool,
    revision: u64,
}

pub async fn run(args: DeploymentArgs) -> Result<(), CliError> {
    let format = args.global.output;
    // Validate what is complete before dialing: a typo fails fast, even offline.
    let create = match &args.command {
        DeploymentCommand::Create(create) => Some(create_request(create)?),
        DeploymentCommand::Update(update) => {
            update_request(update)?;
            None
        }
        _ => None,
    };
    let connection = config::resolve(&args.global)?;
    let url = connection.url.clone();
    let mut control = client::connect(&connection).await?;
    let err = |status| status_error(status, &url);
    // Create and update: the gateway's validation errors say the flag, not the field.
    let flag_err = |status: tonic::Status| {
        if status.code() == tonic::Code::InvalidArgument {
            let message = flags::in_message(status.message());
            status_error(tonic::Status::invalid_argument(message), &url)
        } else {
            status_error(status, &url)
        }
    };
    match args.command {
        DeploymentCommand::Create(create_args) => {
            let req = create.expect("built above for create");
            let created = control
                .create_deployment(request(req))
                .await
                .map_err(flag_err)?
                .into_inner();
            let view = DeploymentView::from(&created);
            if create_args.wait.wait && !format.is_human() {
                // Scripts get the object as it is after the wait; progress stays on stderr.
                let waited =
                    wait::until_available(&mut control, &url, &created, create_args.wait.timeout)
                        .await;
                print_final(&mut control, &url, format, &view).await?;
                waited?;
            } else {
                print_one(format, &view, || output::deployment_summary(&view))?;
                if create_args.wait.wait {
                    wait::until_available(&mut control, &url, &created, create_args.wait.timeout)
                        .await?;
                }
            }
        }
        DeploymentCommand::Ls {
            deployer,
            namespace,
            all_namespaces: _,
            stage,
            watch,
        } => {
            // -A is the default: without -n every namespace is listed.
            let req = proto::ListDeploymentsRequest {
                deployer: deployer.unwrap_or_default(),
                namespace: namespace.unwrap_or_default(),
                stage: stage.unwrap_or_default(),
                ..Default::default()
            };
            if watch {
                return watch::list(&mut control, &url, req, format).await;
            }
            let views: Vec<DeploymentView> =
                client::list_all_deployments(&mut control, req, |d| DeploymentView::from(&d))
                    .await
                    .map_err(err)?;
            if views.is_empty() && format.is_human() {
                eprintln!("No deployments found.");
            } else {
                output::print_resource(
                    format,
                    &views,
                    || output::deployments_table(&views),
                    || output::deployments_wide_table(&views),
                    || output::deployment_names(&views),
                )?;
            }
        }
        DeploymentCommand::Get(get_args) if get_args.watch => {
            return watch::get(&mut control, &url, selector(&get_args.select), format).await;
        }
        DeploymentCommand::Get(get_args) => {
            let select = get_args.select;
            let found = get(&mut control, &select).await.map_err(err)?;
            let view = DeploymentView::from(&found);
            print_one(format, &view, || output::deployment_fields(&view))?;
        }
        DeploymentCommand::Update(update_args) => {
            let req = update_request(&update_args)?;
            let updated = control
                .update_deployment(request(req))
                .await
                .map_err(flag_err)?
                .into_inner();
            let view = DeploymentView::from(&updated);
            if view.changed == Some(false) {
                // Nothing to roll out: no revision was made, so there is nothing to wait for.
                print_one(format, &view, || {
                    format!(
                        "deployment {}/{}: no change (revision {})\n{}",
                        view.namespace,
                        view.name,
                        view.revision,
                        output::deployment_summary(&view)
                    )
                })?;
                return Ok(());
            }
            if update_args.wait.wait && !format.is_human() {
                let waited =
                    wait::until_available(&mut control, &url, &updated, update_args.wait.timeout)
                        .await;
                print_final(&mut control, &url, format, &view).await?;
                return waited;
            }
            print_one(format, &view, || {
                format!(
                    "deployment {}/{} updated (revision {})\n{}",
                    view.namespace,
                    view.name,
                    view.revision,
                    output::deployment_summary(&view)
                )
            })?;
            if update_args.wait.wait {
                wait::until_available(&mut control, &url, &updated, update_args.wait.timeout)
                    .await?;
            }
        }
        DeploymentCommand::Rm(select) => {
            let response = control
                .delete_deployment(request(proto::DeleteDeploymentRequest {
                    selector: Some(selector(&select)),
                }))
                .await
                .map_err(err)?
                .into_inner();
            let deleted = Deleted {
                id: &response.id,
                deleted: true,
                revision: response.revision,
            };
            print(format, &deleted, || {
                format!(
                    "deployment {} deleted; its agent removes the objects from the cluster",
                    select.deployment
                )
            })?;
        }
        DeploymentCommand::Logs(logs) => {
            super::inspect_cmd::logs(&mut control, &url, logs, format).await?;
        }
        DeploymentCommand::Describe(select) => {
            super::inspect_cmd::describe(&mut control, &url, &select, format).await?;
        }
        DeploymentCommand::History(select) => {
            super::history_cmd::history(&mut control, &url, &select, format).await?;
        }
        DeploymentCommand::Diff(diff) => {
            super::history_cmd::diff(&mut control, &url, &diff, format).await?;
        }
        DeploymentCommand::Promote(promote) => {
            super::promote_cmd::promote(&mut control, &url, &promote, format).await?;
        }
        DeploymentCommand::Rollback(rollback) => {
            let updated = super::history_cmd::rollback(&mut control, &url, &rollback).await?;
            let view = DeploymentView::from(&updated);
            if rollback.wait.wait && !format.is_human() {
                let waited =
                    wait::until_available(&mut control, &url, &updated, rollback.wait.timeout)
                        .await;
                print_final(&mut control, &url, format, &view).await?;
                return waited;
            }
            print_one(format, &view, || {
                let done = if view.changed == Some(false) {
                    "already has that spec: no change"
                } else {
                    "rolled back"
                };
                format!(
                    "deployment {}/{} {done} (revision {})\n{}",
                    view.namespace,
                    view.name,
                    view.revision,
                    output::deployment_summary(&view)
                )
            })?;
            if rollback.wait.wait && view.changed != Some(false) {
                wait::until_available(&mut control, &url, &updated, rollback.wait.timeout).await?;
            }
        }
    }
    Ok(())
}

/// Prints one deployment: `text` for tables, `deployment/NAME` for `-o name`.
fn print_one(
    format: OutputFormat,
    view: &DeploymentView,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let one = std::slice::from_ref(view);
    match format {
        OutputFormat::Wide => output::print_text(&output::deployments_wide_table(one)),
        OutputFormat::Name => output::print_text(&output::deployment_names(one)),
        _ => print(format, view, text),
    }
}

/// After `--wait`: the deployment as the gateway has it now (falls back to `first` if it
/// cannot be read, e.g. deleted meanwhile, so that stdout always holds the object).
async fn print_final(
    control: &mut Control,
    url: &str,
    format: OutputFormat,
    first: &DeploymentView,
) -> Result<(), CliError> {
    let select = SelectArgs {
        deployment: first.id.clone(),
        deployer: None,
        namespace: None,
    };
    let view = match get(control, &select).await {
        Ok(found) => DeploymentView::from(&found),
        Err(status) if status.code() == tonic::Code::NotFound => first.clone(),
        Err(status) => return Err(status_error(status, url)),
    };
    print_one(format, &view, || output::deployment_summary(&view))
}

pub(crate) fn selector(select: &SelectArgs) -> proto::GetDeploymentRequest {
    proto::GetDeploymentRequest {
        deployment: select.deployment.clone(),
        deployer: select.deployer.clone().unwrap_or_default(),
        namespace: select.namespace.clone().unwrap_or_default(),
    }
}

async fn get(
    control: &mut Control,
    select: &SelectArgs,
) -> Result<proto::DeploymentView, tonic::Status> {
    control
        .get_deployment(request(selector(select)))
        .await
        .map(tonic::Response::into_inner)
}

/// The spec `create`'s flags describe.
fn create_spec(args: &CreateArgs) -> DeploymentSpec {
    let mut spec = DeploymentSpec {
        model_name: args.model_name.clone(),
        image: args.image.clone(),
        replicas: args.replicas,
        port: args.port,
        host: args.host.clone().filter(|h| !h.is_empty()),
        ingress_class: args.ingress_class.clone().filter(|c| !c.is_empty()),
        env: args
            .env
            .iter()
            .map(|(name, value)| ds_core::EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        resources: ds_core::Resources {
            // One value sets both, as `update --cpu` does on the gateway; a separate
            // limit is the exception.
            cpu_request: args.cpu.clone(),
            cpu_limit: args.cpu_limit.clone().or_else(|| args.cpu.clone()),
            memory_request: args.memory.clone(),
            memory_limit: args.memory_limit.clone().or_else(|| args.memory.clone()),
        },
        proxy: ds_core::ProxySpec {
            enabled: !args.no_proxy,
            class_names: args.class_names.clone(),
            query_log: args.query_log,
            protocol: args
                .proxy_protocol
                .clone()
                .and_then(ds_core::convert::proxy_protocol),
        },
        labels: args.labels.iter().cloned().collect(),
        // Off here; the pod-level flags fill them in below.
        gpu: 0,
        gpu_resource: None,
        image_pull_secrets: Vec::new(),
        tls_secret: None,
        ingress_annotations: Default::default(),
        command: Vec::new(),
        args: Vec::new(),
        node_selector: Default::default(),
        tolerations: Vec::new(),
        priority_class: None,
        ready_path: None,
        startup_timeout_seconds: 0,
        // Off here; the model-from-storage flags fill them in below.
        model_uri: None,
        model_path: None,
        storage_secret: None,
        model_sha256: None,
        min_replicas: 0,
        max_replicas: 0,
        target_cpu_percent: None,
        max_unavailable: None,
    };
    args.pod.fill(&mut spec);
    args.storage.fill(&mut spec);
    args.scale.fill(&mut spec);
    spec
}

/// Builds and validates the create request (the gateway validates again).
fn create_request(args: &CreateArgs) -> Result<proto::CreateDeploymentRequest, CliError> {
    let name = args.name.clone().unwrap_or_else(|| args.model_name.clone());
    let spec = create_spec(args);
    ds_core::validate_deployment(&name, &args.namespace, &spec).map_err(|mut e| {
        if e.field == "name" && args.name.is_none() {
            e.rule
                .push_str(" (the name defaults to --model-name; give --name)");
        }
        flags::local(e)
    })?;
    Ok(proto::CreateDeploymentRequest {
        deployer: args.deployer.clone(),
        name,
        namespace: args.namespace.clone(),
        // The wire conversion lives with the gateway (`gateway::convert`).
        spec: Some(spec.into()),
    })
}

/// Builds the update request; refuses an update that changes nothing.
fn update_request(args: &UpdateArgs) -> Result<proto::UpdateDeploymentRequest, CliError> {
    for quantity in [
        ("--cpu", &args.cpu),
        ("--memory", &args.memory),
        ("--cpu-limit", &args.cpu_limit),
        ("--memory-limit", &args.memory_limit),
    ] {
        if let (flag, Some(value)) = quantity
            && !value.is_empty()
        {
            ds_core::validate::parse_quantity(value).map_err(|reason| CliError::BadFlag {
                flag: flag.to_string(),
                value: value.clone(),
                reason,
            })?;
        }
    }
    let proxy_enabled = match (args.proxy, args.no_proxy) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let proxy_query_log = match (args.query_log, args.no_query_log) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut req = proto::UpdateDeploymentRequest {
        selector: Some(selector(&args.select)),
        image: args.image.clone(),
        replicas: args.replicas,
        port: args.port,
        host: args.host.clone(),
        set_env: args
            .env
            .iter()
            .map(|(name, value)| proto::EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        unset_env: args.unset_env.clone(),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        proxy_enabled,
        ingress_class: args.ingress_class.clone(),
        proxy_query_log,
        cpu_limit: args.cpu_limit.clone(),
        memory_limit: args.memory_limit.clone(),
        // `--class-names ""` is an empty list: clear them.
        class_names: args.class_names.as_ref().map(|names| proto::StringList {
            values: names.iter().filter(|n| !n.is_empty()).cloned().collect(),
        }),
        set_labels: args.labels.iter().cloned().collect(),
        unset_labels: args.unset_labels.clone(),
        model_name: args.model_name.clone(),
        proxy_protocol: args.proxy_protocol.clone(),
        ..Default::default()
    };
    let pod_changes = args.pod.fill(&mut req);
    let storage_changes = args.storage.fill(&mut req);
    let scale_changes = args.scale.fill(&mut req);
    let changes_something = pod_changes
        || storage_changes
        || scale_changes
        || req.image.is_some()
        || req.replicas.is_some()
        || req.port.is_some()
        || req.host.is_some()
        || !req.set_env.is_empty()
        || !req.unset_env.is_empty()
        || req.cpu.is_some()
        || req.memory.is_some()
        || req.proxy_enabled.is_some()
        || req.proxy_query_log.is_some()
        || req.proxy_protocol.is_some()
        || req.ingress_class.is_some()
        || req.cpu_limit.is_some()
        || req.memory_limit.is_some()
        || req.class_names.is_some()
        || !req.set_labels.is_empty()
        || !req.unset_labels.is_empty()
        || req.model_name.is_some();
    if !changes_something {
        return Err(CliError::NothingToUpdate(args.select.deployment.clone()));
    }
    Ok(req)
}
