//! Compiles the protobuf service definitions without `protoc`: protox parses
//! the .proto files into a FileDescriptorSet, tonic-prost-build generates code.

fn compile(protos: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile(&["proto/raft.proto"])?;
    compile(&["proto/admin.proto"])?;
    Ok(())
}
