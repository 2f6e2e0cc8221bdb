//! The resource types the simulator serves, with their Kubernetes discovery facts.

/// One served resource type (`deployments.apps/v1`, …) and how Kubernetes treats it.
#[derive(Debug)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name used in URLs.
    pub resource: &'static str,
    /// Singular name (discovery).
    pub singular: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Short names kubectl accepts (`deploy`, `svc`, …).
    pub short_names: &'static [&'static str],
    /// Whether a `/status` subresource exists (then writes to the main resource keep status).
    pub status: bool,
    /// Whether `metadata.generation` counts spec changes.
    pub generation: bool,
}

// A table-row constructor: one argument per column reads best in the table below.
#[allow(clippy::too_many_arguments)]
const fn rt(
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    generation: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        resource,
        singular,
        kind,
        namespaced,
        short_names,
        status,
        generation,
    }
}

/// Every resource type served. The index in this table is the store's resource id.
#[rustfmt::skip]
pub static RESOURCES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "namespace", "Namespace", false, &["ns"], true, false),
    rt("", "v1", "services", "service", "Service", true, &["svc"], true, false),
    rt("", "v1", "secrets", "secret", "Secret", true, &[], false, false),
    rt("", "v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], false, false),
    rt("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], false, false),
    rt("", "v1", "events", "event", "Event", true, &["ev"], false, false),
    rt("", "v1", "pods", "pod", "Pod", true, &["po"], true, true),
    rt("apps", "v1", "deployments", "deployment", "Deployment", true, &["deploy"], true, true),
    rt("networking.k8s.io", "v1", "ingresses", "ingress", "Ingress", true, &["ing"], true, true),
    rt("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, &[], false, false),
    rt("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", true, &["pdb"], true, true),
    rt("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true, &[], false, false),
    rt("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true, &[], false, false),
    rt("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false, &[], false, false),
    rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", false, &[], false, false),
    rt("autoscaling", "v2", "horizontalpodautoscalers", "horizontalpodautoscaler", "HorizontalPodAutoscaler", true, &["hpa"], true, true),
    rt("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], true, true),
];

/// Store id of namespaces.
pub const NAMESPACES: usize = 0;
/// Store id of pods.
pub const PODS: usize = 6;
/// Store id of deployments.
pub const DEPLOYMENTS: usize = 7;
/// Store id of replicasets.
pub const REPLICASETS: usize = 16;

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `services` for the core group (as in Status messages).
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Deployment.apps`, or `Service` for the core group (as in Invalid messages).
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The discovery verbs.
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// Finds a resource type by URL coordinates.
pub fn find(group: &str, version: &str, resource: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.resource == resource)
}

/// Finds a resource type by `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// The distinct `(group, version)` pairs, in table order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
