//! Compiles `proto/ringkv.proto` with a vendored protoc, so a machine with
//! only cargo builds the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/ringkv.proto");
    tonic_prost_build::configure().compile_protos(&["proto/ringkv.proto"], &["proto"])?;
    Ok(())
}
