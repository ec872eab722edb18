//! Builds the kernel programs (`port-tracer-ebpf`) with the nightly toolchain and
//! bpf-linker, so that the `port-tracer` binary embeds them. `cargo xtask setup` installs
//! both.
fn main() -> anyhow::Result<()> {
    // The programs also compile the shared types: a change there must rebuild them, or the
    // embedded object would disagree with userspace about layouts and map sizes.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../port-tracer-common")
    );
    let ebpf = aya_build::Package {
        name: "port-tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../port-tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
