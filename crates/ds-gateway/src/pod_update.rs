//! The update semantics of the pod-level options (issue 16): an absent field leaves its
//! option as it is; scalars take "" or 0 to clear, lists come whole (an empty list
//! clears), maps are set and unset by key, as labels are.

use ds_core::proto::UpdateDeploymentRequest;
use ds_core::{DeploymentSpec, Toleration};

/// Applies the request's pod-level fields to `spec`.
pub(crate) fn apply(spec: &mut DeploymentSpec, req: &UpdateDeploymentRequest) {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let Some(gpu) = req.gpu {
        spec.gpu = gpu;
        if gpu == 0 {
            // No GPUs, no resource name: `--gpu 0` turns accelerators off altogether.
            spec.gpu_resource = None;
        }
    }
    if let Some(resource) = &req.gpu_resource {
        spec.gpu_resource = non_empty(resource);
    }
    if let Some(secrets) = &req.image_pull_secrets {
        spec.image_pull_secrets.clone_from(&secrets.values);
    }
    if let Some(secret) = &req.tls_secret {
        spec.tls_secret = non_empty(secret);
    }
    for key in &req.unset_ingress_annotations {
        spec.ingress_annotations.remove(key);
    }
    for (key, value) in &req.set_ingress_annotations {
        spec.ingress_annotations.insert(key.clone(), value.clone());
    }
    if let Some(command) = &req.command {
        spec.command.clone_from(&command.values);
    }
    if let Some(args) = &req.args {
        spec.args.clone_from(&args.values);
    }
    for key in &req.unset_node_selector {
        spec.node_selector.remove(key);
    }
    for (key, value) in &req.set_node_selector {
        spec.node_selector.insert(key.clone(), value.clone());
    }
    if let Some(tolerations) = &req.tolerations {
        spec.tolerations = tolerations
            .values
            .iter()
            .cloned()
            .map(Toleration::from)
            .collect();
    }
    if let Some(class) = &req.priority_class {
        spec.priority_class = non_empty(class);
    }
    if let Some(path) = &req.ready_path {
        spec.ready_path = non_empty(path);
    }
    if let Some(seconds) = req.startup_timeout_seconds {
        spec.startup_timeout_seconds = seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::proto::{self, StringList};

    fn full() -> DeploymentSpec {
        let mut s = DeploymentSpec::test("iris").host("iris.example.com");
        s.gpu = 1;
        s.gpu_resource = Some("amd.com/gpu".into());
        s.image_pull_secrets = vec!["regcred".into()];
        s.tls_secret = Some("iris-tls".into());
        s.ingress_annotations.insert("a.io/x".into(), "1".into());
        s.command = vec!["serve".into()];
        s.args = vec!["--fast".into()];
        s.node_selector.insert("gpu".into(), "a100".into());
        s.tolerations = vec![Toleration::parse("gpu:NoSchedule").unwrap()];
        s.priority_class = Some("high".into());
        s.ready_path = Some("/ready".into());
        s.startup_timeout_seconds = 600;
        s
    }

    #[test]
    fn absent_fields_leave_every_option_as_it_is() {
        let mut s = full();
        apply(&mut s, &UpdateDeploymentRequest::default());
        assert_eq!(s, full());
    }

    #[test]
    fn empty_values_clear_every_option() {
        let mut s = full();
        let none = || Some(StringList { values: vec![] });
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                gpu: Some(0),
                image_pull_secrets: none(),
                tls_secret: Some(String::new()),
                unset_ingress_annotations: vec!["a.io/x".into()],
                command: none(),
                args: none(),
                unset_node_selector: vec!["gpu".into()],
                tolerations: Some(proto::TolerationList { values: vec![] }),
                priority_class: Some(String::new()),
                ready_path: Some(String::new()),
                startup_timeout_seconds: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(s, DeploymentSpec::test("iris").host("iris.example.com"));
    }

    #[test]
    fn new_values_replace_lists_and_merge_maps_by_key() {
        let mut s = full();
        apply(
            &mut s,
            &UpdateDeploymentRequest {
                gpu: Some(4),
                gpu_resource: Some(String::new()),
                args: Some(StringList {
                    values: vec!["--a".into(), "--b".into()],
                }),
                set_node_selector: [("zone".to_string(), "eu".to_string())].into(),
                tolerations: Some(proto::TolerationList {
                    values: vec![proto::Toleration {
                        key: "k".into(),
                        value: "v".into(),
                        effect: "NoExecute".into(),
                    }],
                }),
                ..Default::default()
            },
        );
        assert_eq!((s.gpu, s.gpu_resource_name()), (4, "nvidia.com/gpu"));
        assert_eq!(s.args, ["--a", "--b"]);
        assert_eq!(s.node_selector.len(), 2);
        assert_eq!(s.tolerations, [Toleration::parse("k=v:NoExecute").unwrap()]);
        assert_eq!(s.command, ["serve"], "untouched");
    }
}
