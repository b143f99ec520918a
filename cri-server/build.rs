//! Generates the CRI v1 bindings from the vendored api.proto with protox (pure Rust, no protoc: Debian's
//! protoc 3.21 rejects cri-api >= 1.34). `hack/update-cri-proto.sh` refreshes the proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(false)
        // Undecodable requests answer InvalidArgument, not tonic_prost's Internal (see src/codec.rs).
        .codec_path("crate::codec::CriCodec")
        .compile_fds(fds)?;
    Ok(())
}
