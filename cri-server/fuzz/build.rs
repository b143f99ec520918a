//! The CRI v1 messages from berth-cri's vendored api.proto, without the gRPC services (see ../build.rs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/api.proto");
    let fds = protox::compile(["api.proto"], ["../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
