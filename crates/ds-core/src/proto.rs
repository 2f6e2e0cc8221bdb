//! The generated gRPC types and services of `proto/deployer/v1/deployer.proto`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("ds.deployer.v1");
