//! The update semantics of the model from storage (issue 16): an absent field leaves it
//! as it is, "" clears it; clearing the URI clears its path, secret and checksum too.

use ds_core::DeploymentSpec;
use ds_core::proto::UpdateDeploymentRequest;

/// Applies the request's model-from-storage fields to `spec`.
pub(crate) fn apply(spec: &mut DeploymentSpec, req: &UpdateDeploymentRequest) {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let Some(uri) = &req.model_uri {
        spec.model_uri = non_empty(uri);
        if spec.model_uri.is_none() {
            // No model from storage: its options would only be refused by validation.
            spec.model_path = None;
            spec.storage_secret = None;
            spec.model_sha256 = None;
        }
    }
    if let Some(path) = &req.model_path {
        spec.model_path = non_empty(path);
    }
    if let Some(secret) = &req.storage_secret {
        spec.storage_secret = non_empty(secret);
    }
    if let Some(sum) = &req.model_sha256 {
        spec.model_sha256 = non_empty(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> DeploymentSpec {
        let mut s = DeploymentSpec::test("iris");
        s.model_uri = Some("s3://models/iris.onnx".into());
        s.model_path = Some("/mnt/model".into());
        s.storage_secret = Some("s3-creds".into());
        s.model_sha256 = Some("a".repeat(64));
        s
    }

    #[test]
    fn absent_fields_leave_the_model_as_it_is() {
        let mut s = stored();
        apply(&mut s, &UpdateDeploymentRequest::default());
        assert_eq!(s, stored());
    }

    #[test]
    fn fields_change_one_by_one_and_empty_clears() {
        let mut s = stored();
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                model_uri: Some("s3://models/iris-v2.onnx".into()),
                model_sha256: Some(String::new()),
                ..Default::default()
            },
        );
        assert_eq!(s.model_uri.as_deref(), Some("s3://models/iris-v2.onnx"));
        assert_eq!(s.model_sha256, None);
        assert_eq!(s.storage_secret.as_deref(), Some("s3-creds"));
        assert_eq!(s.model_path.as_deref(), Some("/mnt/model"));
    }

    #[test]
    fn clearing_the_uri_clears_its_options() {
        let mut s = stored();
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                model_uri: Some(String::new()),
                ..Default::default()
            },
        );
        assert_eq!(s, DeploymentSpec::test("iris"));
    }
}
