//! `cargo xtask import model.onnx model.safetensors [--batch N] [--output NAME]`:
//! an ONNX model as a qbake model file (f32 tensors plus `qbake.graph`).

use qbake_codegen::onnx::{self, ImportOptions};
use std::error::Error;
use std::path::Path;

const USAGE: &str = "usage: cargo xtask import MODEL.onnx OUT.safetensors [--batch N] [--output NAME]

  --batch N      the size of a dynamic batch dimension (default 1)
  --output NAME  the graph output to compute, when the model has several";

/// Parses the arguments after `import` and runs it.
pub fn run(args: &[String]) -> Result<(), Box<dyn Error>> {
    let mut paths = Vec::new();
    let mut options = ImportOptions::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--batch" => {
                let n = args.next().ok_or("--batch takes a number")?;
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--batch takes a positive number, not `{n}`"))?;
                options.batch = Some(n);
            }
            "--output" => {
                let name = args.next().ok_or("--output takes a graph output's name")?;
                options.output = Some(name.clone());
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option `{flag}`\n\n{USAGE}").into());
            }
            path => paths.push(path),
        }
    }
    let [input, output] = paths.as_slice() else {
        return Err(format!("import takes two paths, got {}\n\n{USAGE}", paths.len()).into());
    };
    import(Path::new(input), Path::new(output), &options)
}

fn import(input: &Path, output: &Path, options: &ImportOptions) -> Result<(), Box<dyn Error>> {
    let bytes = std::fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let imported = onnx::import(&bytes, options).map_err(|e| format!("{}: {e}", input.display()))?;
    onnx::write_safetensors(&imported, output)?;
    let values: usize = imported.tensors.iter().map(|t| t.data.len()).sum();
    println!(
        "wrote {}: {} tensors ({values} f32 values) and the graph",
        output.display(),
        imported.tensors.len(),
    );
    Ok(())
}
