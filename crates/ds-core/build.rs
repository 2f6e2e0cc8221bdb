//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a machine with only
//! the Rust toolchain can build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let mut config = prost_build::Config::new();
    // The vendored binary: no system protoc needed, and no `set_var` (unsafe in 2024).
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["../../proto/deployer/v1/deployer.proto"],
        &["../../proto"],
    )?;
    Ok(())
}
