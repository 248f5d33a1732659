//! Compiles the machine API protos with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/plinth/machine/v1/machine.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
