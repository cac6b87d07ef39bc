//! The loss options `eval` and `bench` share, by the same names.

use wgpu_loss::Reduction;
use wgpu_loss_cli::problem::Settings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReductionArg {
    None,
    Mean,
    Sum,
}

/// Scalar loss options (PyTorch's and torchvision's names and defaults).
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct LossOptionArgs {
    /// Reduction of the loss [default: mean].
    #[arg(long, value_enum)]
    pub(crate) reduction: Option<ReductionArg>,
    /// Target value ignored by cross-entropy and focal [default: -100].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) ignore_index: Option<i64>,
    /// Label smoothing in [0, 1] (cross-entropy) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) label_smoothing: Option<f32>,
    /// z-loss weight (cross-entropy) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) z_loss: Option<f32>,
    /// Logit softcap c > 0 (cross-entropy) [default: none].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) softcap: Option<f32>,
    /// Alpha: sigmoid-focal's class balance (-1 disables) [default: 0.25]; for focal, one
    /// alpha for every class [default: none].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) alpha: Option<f32>,
    /// Focusing parameter gamma >= 0 (focal losses) [default: 2].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) gamma: Option<f32>,
}

impl LossOptionArgs {
    /// The options as the problems take them, defaults filled in.
    pub(crate) fn settings(&self) -> Settings {
        let d = Settings::default();
        Settings {
            reduction: match self.reduction {
                None => d.reduction,
                Some(ReductionArg::None) => Reduction::None,
                Some(ReductionArg::Mean) => Reduction::Mean,
                Some(ReductionArg::Sum) => Reduction::Sum,
            },
            ignore_index: self.ignore_index.unwrap_or(d.ignore_index),
            label_smoothing: self.label_smoothing.unwrap_or(d.label_smoothing),
            z_loss: self.z_loss.unwrap_or(d.z_loss),
            softcap: self.softcap,
            alpha: self.alpha,
            gamma: self.gamma.unwrap_or(d.gamma),
        }
    }
}
