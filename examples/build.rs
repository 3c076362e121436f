//! Bakes the digits classifier for the `digits_build` example: the
//! build-script path, for models too large for a macro or for the cheapest
//! rebuilds. The model is baked again only when the file changes.

fn main() -> Result<(), qbake_codegen::Error> {
    qbake_codegen::Model::new("models/digits.safetensors")
        .per_channel(true)
        .emit("digits")
}
