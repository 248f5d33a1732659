//! Compiles the CRI v1 protos (vendored from k8s.io/cri-api) with protox
//! (pure Rust), so no `protoc` is needed. Only the client side is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/runtime/v1/api.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
