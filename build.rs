//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a machine with only
//! the Rust toolchain can build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .protoc_path(protoc)
        .compile_protos(&["proto/deployer/v1/deployer.proto"], &["proto"])?;
    Ok(())
}
