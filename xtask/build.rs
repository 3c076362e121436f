//! Generates MobileNet V1 (synthetic weights, `src/mobilenet_v1.rs`) as an
//! ONNX file in `OUT_DIR` and bakes it, as an application's build script
//! would (`reference = true`), for `cargo xtask bench`: the bench and
//! ONNX Runtime then run the same file. Nothing to download, and the same
//! bytes on every build.

use std::path::PathBuf;

#[path = "src/xorshift.rs"]
mod xorshift;
// The build script uses a subset of the builders.
#[path = "src/mobilenet_v1.rs"]
mod mobilenet_v1;
#[allow(dead_code)]
#[path = "src/onnx_writer.rs"]
mod onnx_writer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=src/mobilenet_v1.rs");
    println!("cargo::rerun-if-changed=src/onnx_writer.rs");
    println!("cargo::rerun-if-changed=src/xorshift.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    let onnx = out.join("mobilenet_v1.onnx");
    std::fs::write(&onnx, mobilenet_v1::onnx_bytes())?;
    // `emit_into`, not `emit`: `emit` would watch the file this script
    // writes, and so run the script again on every build.
    qbake_codegen::Model::new(&onnx)
        .reference(true)
        .emit_into(&onnx, &out, "mobilenet_v1")?;
    Ok(())
}
