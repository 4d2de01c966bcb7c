//! Compiles the minimal etcd v3 API subset in `proto/` with protox (pure
//! Rust, no protoc on the machine), as `proto/build.rs` does for weft.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
