//! Builds the kernel programs (`port-tracer-ebpf`) with the nightly toolchain and
//! bpf-linker, so that the `port-tracer` binary embeds them. `cargo xtask setup` installs
//! both.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "port-tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../port-tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
