//! The model-from-storage flags of `ds deployment create` and `update` (issue 16):
//! `--model-uri`, `--model-path`, `--storage-secret`, `--model-sha256`; and how `get`
//! shows them. The Secret's contents never pass through here: only its name.

use clap::Args;
use ds_core::DeploymentSpec;
use ds_core::proto;

/// `create`'s model-from-storage flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model from storage")]
pub struct StorageCreateArgs {
    /// Where the model comes from: s3://BUCKET/KEY (or PREFIX/), gs://BUCKET/PATH,
    /// https://HOST/PATH (downloaded by an init container) or pvc://CLAIM/PATH (mounted).
    #[arg(long, value_name = "URI")]
    pub model_uri: Option<String>,
    /// Where the model container sees the model, read-only (default /models).
    #[arg(long, value_name = "PATH")]
    pub model_path: Option<String>,
    /// Secret in the namespace whose keys become the download's environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GCS_TOKEN…).
    #[arg(long, value_name = "NAME")]
    pub storage_secret: Option<String>,
    /// SHA-256 (hex) of a single-file model, checked before the model starts.
    #[arg(long, value_name = "HEX")]
    pub model_sha256: Option<String>,
}

/// `update`'s model-from-storage flags: absent flags leave their option as it is, `""`
/// clears it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model from storage")]
pub struct StorageUpdateArgs {
    /// New model URI; `""` removes the model from storage (and the options below).
    #[arg(long, value_name = "URI")]
    pub model_uri: Option<String>,
    /// New model path; `""` means /models.
    #[arg(long, value_name = "PATH")]
    pub model_path: Option<String>,
    /// New storage Secret; `""` removes it.
    #[arg(long, value_name = "NAME")]
    pub storage_secret: Option<String>,
    /// New SHA-256 of the model file; `""` removes the check.
    #[arg(long, value_name = "HEX")]
    pub model_sha256: Option<String>,
}

impl StorageCreateArgs {
    /// Puts the flags' options into `spec`.
    pub fn fill(&self, spec: &mut DeploymentSpec) {
        let given = |o: &Option<String>| o.clone().filter(|v| !v.is_empty());
        spec.model_uri = given(&self.model_uri);
        spec.model_path = given(&self.model_path);
        spec.storage_secret = given(&self.storage_secret);
        spec.model_sha256 = given(&self.model_sha256);
    }
}

impl StorageUpdateArgs {
    /// Puts the flags' changes into `req`; whether there is any.
    pub fn fill(&self, req: &mut proto::UpdateDeploymentRequest) -> bool {
        req.model_uri.clone_from(&self.model_uri);
        req.model_path.clone_from(&self.model_path);
        req.storage_secret.clone_from(&self.storage_secret);
        req.model_sha256.clone_from(&self.model_sha256);
        req.model_uri.is_some()
            || req.model_path.is_some()
            || req.storage_secret.is_some()
            || req.model_sha256.is_some()
    }
}

/// The `ds deployment get` lines of the model from storage, when there is one.
pub fn shown(s: &DeploymentSpec) -> Vec<(&'static str, String)> {
    let Some(uri) = &s.model_uri else {
        return Vec::new();
    };
    let mut out = vec![
        ("Model URI", uri.clone()),
        (
            "Model path",
            ds_core::model_source::model_path(s).to_string(),
        ),
    ];
    if let Some(secret) = &s.storage_secret {
        out.push(("Storage secret", secret.clone()));
    }
    if let Some(sum) = &s.model_sha256 {
        out.push(("Model SHA-256", sum.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_shows_the_model_only_when_there_is_one() {
        assert!(shown(&DeploymentSpec::test("iris")).is_empty());
        let mut s = DeploymentSpec::test("iris");
        s.model_uri = Some("s3://models/iris/".into());
        s.storage_secret = Some("s3-creds".into());
        assert_eq!(
            shown(&s),
            [
                ("Model URI", "s3://models/iris/".to_string()),
                ("Model path", "/models".to_string()),
                ("Storage secret", "s3-creds".to_string()),
            ]
        );
    }

    #[test]
    fn update_sends_only_the_flags_given() {
        let args = StorageUpdateArgs {
            model_uri: None,
            model_path: None,
            storage_secret: Some(String::new()),
            model_sha256: None,
        };
        let mut req = proto::UpdateDeploymentRequest::default();
        assert!(args.fill(&mut req));
        assert_eq!(req.storage_secret.as_deref(), Some(""));
        assert_eq!(req.model_uri, None);
        let none = StorageUpdateArgs {
            storage_secret: None,
            ..args
        };
        assert!(!none.fill(&mut proto::UpdateDeploymentRequest::default()));
    }
}
