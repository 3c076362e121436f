//! The macro's arguments: `"path" [, option = value]*`.

use crate::{Calibration, Options, generate};
use proc_macro2::TokenStream;
use std::path::Path;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, Lit, LitStr, Token};

/// The whole `quantized_model!` expansion: the baked model's items, or one
/// `compile_error!` at the argument at fault.
///
/// `base_dir` is the directory a relative model path resolves against: the
/// invoking source file's, as `include_bytes!` does.
pub fn quantized_model(input: TokenStream, base_dir: &Path) -> TokenStream {
    expand(input, base_dir).unwrap_or_else(syn::Error::into_compile_error)
}

fn expand(input: TokenStream, base_dir: &Path) -> syn::Result<TokenStream> {
    let mut args: MacroArgs = syn::parse2(input)?;
    let written = args.path.value();
    let path = base_dir.join(&written);
    if let Some(calibration) = &args.calibration {
        args.options.calibration = match calibration.value().as_str() {
            "synthetic" => Calibration::Synthetic,
            "none" => Calibration::Off,
            path => Calibration::Inputs(base_dir.join(path)),
        };
    }
    generate(&path, &written, &args.options).map_err(|e| {
        let at = match &args.calibration {
            Some(calibration) if e.is_calibration() => calibration.span(),
            _ => args.path.span(),
        };
        syn::Error::new(at, format!("qbake: {e}"))
    })
}

struct MacroArgs {
    path: LitStr,
    options: Options,
    /// The `calibration` argument as written, for its span and its path.
    calibration: Option<LitStr>,
}

impl Parse for MacroArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(syn::Error::new(
                proc_macro2::Span::call_site(),
                "qbake: expected the model file's path, as in `quantized_model!(\"model.safetensors\")`",
            ));
        }
        let path: LitStr = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "qbake: the first argument must be the model file's path, a string literal",
            )
        })?;
        let mut options = Options::default();
        let mut calibration = None;
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let name: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let value: Lit = input.parse()?;
            let key = name.to_string();
            if seen.contains(&key) {
                return Err(syn::Error::new(
                    name.span(),
                    format!("qbake: option `{key}` is given twice"),
                ));
            }
            match key.as_str() {
                "per_channel" => options.per_channel = bool_value(&key, &value)?,
                "keep_float_below" => options.keep_float_below = usize_value(&key, &value)?,
                "bias_correction" => options.bias_correction = bool_value(&key, &value)?,
                "mse_ranges" => options.mse_ranges = bool_value(&key, &value)?,
                "equalize" => options.equalize = bool_value(&key, &value)?,
                "balanced_rounding" => options.balanced_rounding = bool_value(&key, &value)?,
                "compensated_rounding" => options.compensated_rounding = bool_value(&key, &value)?,
                "reference" => options.reference = bool_value(&key, &value)?,
                "warn_sqnr_below" => {
                    options.warn_sqnr_below = u32::try_from(usize_value(&key, &value)?)
                        .map_err(|_| syn::Error::new(value.span(), "qbake: `warn_sqnr_below` is too large"))?
                }
                "output" => options.output = Some(str_value(&key, &value)?),
                "calibration" => match value {
                    Lit::Str(s) => calibration = Some(s),
                    _ => {
                        return Err(syn::Error::new(
                            value.span(),
                            "qbake: `calibration` takes a file path, \"synthetic\" or \"none\", a string",
                        ));
                    }
                },
                "batch" => {
                    let batch = usize_value(&key, &value)?;
                    if batch == 0 {
                        return Err(syn::Error::new(value.span(), "qbake: `batch` must be at least 1"));
                    }
                    options.batch = Some(batch);
                }
                _ => {
                    let known = Options::NAMES
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>();
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "qbake: unknown option `{key}`; the options are {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
            seen.push(key);
        }
        Ok(MacroArgs {
            path,
            options,
            calibration,
        })
    }
}

fn bool_value(key: &str, value: &Lit) -> syn::Result<bool> {
    match value {
        Lit::Bool(b) => Ok(b.value),
        _ => Err(syn::Error::new(
            value.span(),
            format!("qbake: `{key}` takes `true` or `false`"),
        )),
    }
}

fn str_value(key: &str, value: &Lit) -> syn::Result<String> {
    match value {
        Lit::Str(s) => Ok(s.value()),
        _ => Err(syn::Error::new(
            value.span(),
            format!("qbake: `{key}` takes a string"),
        )),
    }
}

fn usize_value(key: &str, value: &Lit) -> syn::Result<usize> {
    match value {
        Lit::Int(i) => i.base10_parse(),
        _ => Err(syn::Error::new(
            value.span(),
            format!("qbake: `{key}` takes a whole number"),
        )),
    }
}
