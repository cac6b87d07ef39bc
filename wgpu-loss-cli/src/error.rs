//! The command's errors: the library's, plus what only the command can get
//! wrong (files, and inputs given to an op that does not use them).

/// An error of the `wgpu-loss` command or its library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the loss library (input checks, the device).
    #[error(transparent)]
    Loss(#[from] wgpu_loss::Error),
    /// An input or option given to an op that does not use it.
    #[error("{what} does not apply to {op}")]
    NotApplicable {
        /// The input or option.
        what: &'static str,
        /// The op.
        op: &'static str,
    },
    /// An input the op needs was not given.
    #[error("{op} needs a {what}")]
    Missing {
        /// The input.
        what: &'static str,
        /// The op.
        op: &'static str,
    },
    /// Targets of the wrong kind (class indices where floats are needed, or the reverse).
    #[error("{op} needs {expected}")]
    InvalidTargetKind {
        /// The op.
        op: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// A file that could not be read or written, or whose contents are not
    /// what was expected (format, dtype, shape).
    #[error("{path}: {problem}")]
    File {
        /// The file as named by the caller.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// `Result` with the command's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
