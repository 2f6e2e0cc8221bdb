//! Pure builders of the model from storage (issue 16): the `model-fetch` init container,
//! the volume the model lives in and its read-only mount in the model container.
//!
//! For `s3://`, `gs://` and `http(s)://` an init container (the agent's own image, as the
//! proxy sidecar) runs `ds model-fetch` into an emptyDir; for `pvc://CLAIM/PATH` the claim
//! is mounted directly with `subPath` PATH and there is no init container.

use ds_core::DeployedObject;
use ds_core::model_source::{ModelUri, model_path};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, PersistentVolumeClaimVolumeSource,
    ResourceRequirements, SecretEnvSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// Name of the init container that downloads the model.
pub const MODEL_FETCH_CONTAINER: &str = "model-fetch";
/// Name of the pod volume holding the model.
pub const MODEL_VOLUME: &str = "model";
/// Where the init container writes the model (its own view of the emptyDir).
pub const FETCH_DEST: &str = "/models";

/// The spec's model URI, when it has a valid one (validation refused the others).
fn uri(obj: &DeployedObject) -> Option<ModelUri> {
    let text = obj.spec.model_uri.as_deref().filter(|u| !u.is_empty())?;
    ModelUri::parse(text).ok()
}

/// The init container that downloads the model, for the schemes that are downloaded.
pub fn fetch_container(obj: &DeployedObject, image: &str) -> Option<Container> {
    let uri = uri(obj)?;
    if !uri.is_fetched() {
        return None;
    }
    let mut args = vec![
        "--uri".to_string(),
        obj.spec.model_uri.clone().unwrap_or_default(),
        "--dest".to_string(),
        FETCH_DEST.to_string(),
    ];
    if let Some(sum) = obj.spec.model_sha256.as_deref().filter(|s| !s.is_empty()) {
        args.push("--sha256".into());
        args.push(sum.to_ascii_lowercase());
    }
    Some(Container {
        name: MODEL_FETCH_CONTAINER.into(),
        image: Some(image.to_string()),
        command: Some(vec!["ds".into(), "model-fetch".into()]),
        args: Some(args),
        // The credentials: the Secret's keys as environment, read by the kubelet; the
        // gateway and the agent never see them.
        env_from: obj
            .spec
            .storage_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|name| {
                vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: name.to_string(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }]
            }),
        volume_mounts: Some(vec![VolumeMount {
            name: MODEL_VOLUME.into(),
            mount_path: FETCH_DEST.into(),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("512Mi".into()),
            )])),
            ..Default::default()
        }),
        // `ds model-fetch` writes its one-line reason there; the logs are the fallback,
        // so the agent can report why the download failed.
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    })
}

/// The pod volume holding the model: an emptyDir the init container fills, or the claim.
pub fn volume(obj: &DeployedObject) -> Option<Volume> {
    let uri = uri(obj)?;
    Some(match uri {
        ModelUri::Pvc { claim, .. } => Volume {
            name: MODEL_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: Some(true),
            }),
            ..Default::default()
        },
        _ => Volume {
            name: MODEL_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    })
}

/// The model container's read-only mount of the model at `model_path`.
pub fn model_mount(obj: &DeployedObject) -> Option<VolumeMount> {
    let uri = uri(obj)?;
    let sub_path = match uri {
        ModelUri::Pvc { path, .. } => Some(path).filter(|p| !p.is_empty()),
        _ => None,
    };
    Some(VolumeMount {
        name: MODEL_VOLUME.into(),
        mount_path: model_path(&obj.spec).to_string(),
        read_only: Some(true),
        sub_path,
        ..Default::default()
    })
}
