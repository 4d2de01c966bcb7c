//! Compiles containerd's vendored API protos with protox (pure Rust, no protoc
//! on the machine), as `proto/build.rs` does for weft.proto. Client code only:
//! weft never serves the containerd API.
const PROTOS: &[&str] = &[
    "services/containers/v1/containers.proto",
    "services/content/v1/content.proto",
    "services/diff/v1/diff.proto",
    "services/events/v1/events.proto",
    "services/images/v1/images.proto",
    "services/leases/v1/leases.proto",
    "services/namespaces/v1/namespace.proto",
    "services/snapshots/v1/snapshots.proto",
    "services/tasks/v1/tasks.proto",
    "services/version/v1/version.proto",
    "types/runc/options/oci.proto",
    "events/container.proto",
    "events/content.proto",
    "events/image.proto",
    "events/namespace.proto",
    "events/snapshot.proto",
    "events/task.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["vendor/containerd-api"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // One file nesting every package as modules, so prost's `super::`
        // paths between packages resolve without any rewriting.
        .include_file("containerd.rs")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=vendor/containerd-api");
    Ok(())
}
