//! The domain core: deployment specs and their validation. Depends on neither kube nor tonic.

pub mod spec;
pub mod validate;

pub use spec::{DeployedObject, DeploymentSpec, EnvVar, ProxySpec, Resources};
pub use validate::{ValidationError, validate_deployer_name, validate_deployment};
