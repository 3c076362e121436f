use std::fmt;

/// Why a model cannot be baked. The message says what and where; the macro
/// shows it as a compile error at its argument.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    calibration: bool,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            calibration: false,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, blamed on the `calibration` option rather than the
    /// model file: the macro shows it at that argument.
    pub fn in_calibration(self) -> Self {
        Error {
            calibration: true,
            ..self
        }
    }

    /// Whether the `calibration` option, not the model, is at fault.
    pub fn is_calibration(&self) -> bool {
        self.calibration
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The message alone: a build script's `main` returning this error prints it
/// with `{:?}`, and it should read as the macro's compile error does.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `Err(Error::new(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::new(format!($($arg)*)))
    };
}
pub(crate) use bail;
