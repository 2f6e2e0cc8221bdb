//! The domain core of ds-deployer: deployment specs, their validation and defaults, and the
//! generated gRPC types of `proto/deployer/v1` with the one place that converts between
//! the two. Depends on neither kube nor a network stack: the proto services are code that
//! the gateway, the agent and the CLI plug into their own transports.

pub mod convert;
pub mod diff;
pub mod duration;
pub mod model_source;
pub mod ownership;
pub mod proto;
pub mod remap;
pub mod spec;
pub mod validate;

pub use spec::{
    DeployedObject, DeploymentSpec, EnvVar, NewDeployment, ProxySpec, Resources, Toleration,
};
pub use validate::{ValidationError, validate_deployer_name, validate_deployment};

/// The image of this very build of `ds`: the agent's default sidecar, the gateway's
/// default agent image (one binary serves both).
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/ds-deployer/ds:", env!("CARGO_PKG_VERSION"));
