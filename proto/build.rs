//! Compiles `proto/*.proto` with protox (pure Rust, no protoc on the machine).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["weft.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Its Debug is written by hand (src/lib.rs): no password in a log.
        .skip_debug(["weft.v1.RegistryCredential"])
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
