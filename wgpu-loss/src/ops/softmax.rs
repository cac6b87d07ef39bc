//! GPU host code of the softmax family; formulas in [`crate::loss::softmax`].

use crate::context::GpuContext;
use crate::error::Result;
use crate::kernels::slot::softmax as sm;
use crate::kernels::Kernel;
use crate::loss::check_matrix;
use crate::loss::softmax::SoftmaxOp;
use crate::ops::{Base, MatrixArg, Params, RowLaunch, WholeArg};
use crate::tensor::{spec, DType, GpuTensor, HostFloat};

fn forward_kernel(op: SoftmaxOp) -> Kernel {
    match op {
        SoftmaxOp::Softmax => Kernel::SoftmaxForward,
        SoftmaxOp::LogSoftmax => Kernel::LogSoftmaxForward,
        SoftmaxOp::Logsumexp => Kernel::LogsumexpForward,
    }
}

/// Inputs of one row-wise kernel call: matrices bound at 1 and 2, per-row
/// arrays at 3 and 4. Matrices, and a matrix output, are stored as `F`.
struct RowwiseCall<'a, F> {
    kernel: Kernel,
    matrices: &'a [(&'static str, &'a [F])],
    per_row: &'a [(&'static str, &'a [f32])],
    /// Output is one value per row (binding 6) rather than a matrix (binding 5).
    per_row_output: bool,
}

impl GpuContext {
    async fn run_rowwise<F: HostFloat>(
        &self,
        call: RowwiseCall<'_, F>,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.check_errors().await?;
        for &(what, data) in call.matrices {
            check_matrix(what, data.len(), rows, cols)?;
        }
        for &(what, data) in call.per_row {
            check_matrix(what, data.len(), rows, 1)?;
        }
        if cols == 0 {
            return Err(crate::Error::ZeroCols);
        }
        let out_per_row = if call.per_row_output { 1 } else { cols };
        let mut out = Vec::with_capacity(rows * out_per_row);
        let chunk_rows = self.rows_per_window(cols)?;
        let mut r0 = 0;
        while r0 < rows {
            let n = chunk_rows.min(rows - r0);
            let what = call.kernel.entry_point();
            let staging = self
                .scoped(what, || {
                    let mats: Vec<_> = call
                        .matrices
                        .iter()
                        .map(|&(label, d)| self.upload(label, &d[r0 * cols..(r0 + n) * cols]))
                        .collect();
                    let per_row: Vec<_> = call
                        .per_row
                        .iter()
                        .map(|&(label, d)| self.upload(label, &d[r0..r0 + n]))
                        .collect();
                    let out_dtype = match call.per_row_output {
                        true => DType::F32,
                        false => F::DTYPE,
                    };
                    let output = self.matrix_output("output", n * out_per_row, out_dtype);
                    let mut matrices: Vec<MatrixArg<'_>> = mats
                        .iter()
                        .zip([(sm::MAT_A, Base::A), (sm::MAT_B, Base::B)])
                        .map(|(buffer, (binding, base))| MatrixArg {
                            binding,
                            buffer,
                            offset: 0,
                            base,
                            storage: F::DTYPE.storage(),
                        })
                        .collect();
                    let mut whole: Vec<WholeArg<'_>> = per_row
                        .iter()
                        .zip([sm::ROW_A, sm::ROW_B])
                        .map(|(buffer, binding)| WholeArg::new(binding, buffer))
                        .collect();
                    if call.per_row_output {
                        whole.push(WholeArg::new(sm::ROW_OUT, &output));
                    } else {
                        matrices.push(MatrixArg {
                            binding: sm::MAT_OUT,
                            buffer: &output,
                            offset: 0,
                            base: Base::Out,
                            storage: F::DTYPE.storage(),
                        });
                    }
                    let mut encoder = self.encoder(what);
                    self.encode_rows(
                        &mut encoder,
                        RowLaunch {
                            kernel: call.kernel,
                            rows: n,
                            cols,
                            matrices: &matrices,
                            whole: &whole,
                            params: Params::default(),
                        },
                    )?;
                    let staging = self.stage(
                        &mut encoder,
                        &output,
                        (n * out_per_row) as u64 * out_dtype.size(),
                    );
                    self.queue.submit([encoder.finish()]);
                    Ok(staging)
                })
                .await?;
            if call.per_row_output {
                out.extend(self.read_back::<f32>(&staging, n).await?);
            } else {
                out.extend(self.read_back_widened::<F>(&staging, n * cols).await?);
            }
            r0 += n;
        }
        Ok(out)
    }

    /// A softmax-family forward op over a row-major `[rows, cols]` matrix.
    /// Returns `rows * cols` values, or `rows` values for [`SoftmaxOp::Logsumexp`].
    pub(crate) async fn softmax_family<F: HostFloat>(
        &self,
        op: SoftmaxOp,
        x: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.run_rowwise(
            RowwiseCall {
                kernel: forward_kernel(op),
                matrices: &[("x", x)],
                per_row: &[],
                per_row_output: op == SoftmaxOp::Logsumexp,
            },
            rows,
            cols,
        )
        .await
    }

    /// Row-wise softmax of a row-major `[rows, cols]` matrix.
    pub async fn softmax<F: HostFloat>(
        &self,
        x: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.softmax_family(SoftmaxOp::Softmax, x, rows, cols).await
    }

    /// Row-wise log-softmax of a row-major `[rows, cols]` matrix.
    pub async fn log_softmax<F: HostFloat>(
        &self,
        x: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.softmax_family(SoftmaxOp::LogSoftmax, x, rows, cols)
            .await
    }

    /// Row-wise log-sum-exp: one value per row.
    pub async fn logsumexp<F: HostFloat>(
        &self,
        x: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.softmax_family(SoftmaxOp::Logsumexp, x, rows, cols)
            .await
    }

    /// Softmax backward: `dx = y ⊙ (dy - Σ dy ⊙ y)` per row, from the softmax output `y`.
    pub async fn softmax_backward<F: HostFloat>(
        &self,
        y: &[F],
        dy: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.run_rowwise(
            RowwiseCall {
                kernel: Kernel::SoftmaxBackward,
                matrices: &[("y", y), ("dy", dy)],
                per_row: &[],
                per_row_output: false,
            },
            rows,
            cols,
        )
        .await
    }

    /// Log-softmax backward: `dx = dy - exp(y) Σ dy` per row, from the log-softmax output `y`.
    pub async fn log_softmax_backward<F: HostFloat>(
        &self,
        y: &[F],
        dy: &[F],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.run_rowwise(
            RowwiseCall {
                kernel: Kernel::LogSoftmaxBackward,
                matrices: &[("y", y), ("dy", dy)],
                per_row: &[],
                per_row_output: false,
            },
            rows,
            cols,
        )
        .await
    }

    /// Logsumexp backward: `dx = dy_i · exp(x - lse_i)`, with `lse` the forward
    /// output and `dy` one upstream gradient per row.
    pub async fn logsumexp_backward<F: HostFloat>(
        &self,
        x: &[F],
        lse: &[f32],
        dy: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Vec<f32>> {
        self.run_rowwise(
            RowwiseCall {
                kernel: Kernel::LogsumexpBackward,
                matrices: &[("x", x)],
                per_row: &[("lse", lse), ("dy", dy)],
                per_row_output: false,
            },
            rows,
            cols,
        )
        .await
    }

    /// Checks views and records one row-wise kernel: matrices at bindings 1
    /// and 2, per-row inputs at 3 and 4, output at 5 (matrix) or 6 (per row).
    fn encode_rowwise(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        matrices: &[(&'static str, &GpuTensor<'_>)],
        per_row: &[(&'static str, &GpuTensor<'_>)],
        out: &GpuTensor<'_>,
        per_row_output: bool,
    ) -> Result<()> {
        let first = matrices[0].1;
        let (rows, cols) = (first.rows, first.cols);
        if cols == 0 {
            return Err(crate::Error::ZeroCols);
        }
        // Matrices are all f32 or all f16; per-row values are f32.
        let dtype = match first.dtype {
            DType::F16 | DType::BF16 => first.dtype,
            _ => DType::F32,
        };
        for &(name, v) in matrices {
            self.check_view(v, spec(name, dtype, rows, cols))?;
        }
        for &(name, v) in per_row {
            self.check_view(v, spec(name, DType::F32, rows, 1))?;
            self.check_whole_binding(name, v.bytes())?;
        }
        if per_row_output {
            self.check_view(out, spec("output", DType::F32, rows, 1))?;
            self.check_whole_binding("output", out.bytes())?;
        } else {
            self.check_view(out, spec("output", dtype, rows, cols))?;
        }
        let inputs: Vec<(&'static str, &GpuTensor<'_>)> =
            matrices.iter().chain(per_row).copied().collect();
        crate::tensor::reject_partial_overlap(("output", out), &inputs)?;
        if rows == 0 {
            return Ok(());
        }
        self.scoped_now(kernel.entry_point(), || {
            self.encode_rowwise_checked(encoder, kernel, matrices, per_row, out, per_row_output)
        })
    }

    /// [`GpuContext::encode_rowwise`] after its checks.
    fn encode_rowwise_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        matrices: &[(&'static str, &GpuTensor<'_>)],
        per_row: &[(&'static str, &GpuTensor<'_>)],
        out: &GpuTensor<'_>,
        per_row_output: bool,
    ) -> Result<()> {
        let (rows, cols) = (matrices[0].1.rows, matrices[0].1.cols);
        let mut mats: Vec<MatrixArg<'_>> = matrices
            .iter()
            .zip([(sm::MAT_A, Base::A), (sm::MAT_B, Base::B)])
            .map(|(&(_, v), (binding, base))| MatrixArg {
                binding,
                buffer: v.buffer,
                offset: v.offset_elems(),
                base,
                storage: v.dtype.storage(),
            })
            .collect();
        let mut whole: Vec<WholeArg<'_>> = per_row
            .iter()
            .zip([sm::ROW_A, sm::ROW_B])
            .map(|(&(_, v), binding)| WholeArg::view(binding, v))
            .collect();
        if per_row_output {
            whole.push(WholeArg::view(sm::ROW_OUT, out));
        } else {
            mats.push(MatrixArg {
                binding: sm::MAT_OUT,
                buffer: out.buffer,
                offset: out.offset_elems(),
                base: Base::Out,
                storage: out.dtype.storage(),
            });
        }
        self.encode_rows(
            encoder,
            RowLaunch {
                kernel,
                rows,
                cols,
                matrices: &mats,
                whole: &whole,
                params: Params::default(),
            },
        )
    }

    /// Records a softmax-family forward op into `encoder` without submitting:
    /// `x` is f32 `[rows, cols]`, `out` is `[rows, cols]`, or `[rows, 1]` for
    /// [`SoftmaxOp::Logsumexp`]. Views may share one buffer at aligned offsets.
    pub fn encode_softmax(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: SoftmaxOp,
        x: &GpuTensor<'_>,
        out: &GpuTensor<'_>,
    ) -> Result<()> {
        self.encode_rowwise(
            encoder,
            forward_kernel(op),
            &[("x", x)],
            &[],
            out,
            op == SoftmaxOp::Logsumexp,
        )
    }

    /// Records softmax backward `dx = y ⊙ (dy - Σ dy ⊙ y)` (all `[rows, cols]`).
    pub fn encode_softmax_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        y: &GpuTensor<'_>,
        dy: &GpuTensor<'_>,
        dx: &GpuTensor<'_>,
    ) -> Result<()> {
        self.encode_rowwise(
            encoder,
            Kernel::SoftmaxBackward,
            &[("y", y), ("dy", dy)],
            &[],
            dx,
            false,
        )
    }

    /// Records log-softmax backward `dx = dy - exp(y) Σ dy` (all `[rows, cols]`).
    pub fn encode_log_softmax_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        y: &GpuTensor<'_>,
        dy: &GpuTensor<'_>,
        dx: &GpuTensor<'_>,
    ) -> Result<()> {
        self.encode_rowwise(
            encoder,
            Kernel::LogSoftmaxBackward,
            &[("y", y), ("dy", dy)],
            &[],
            dx,
            false,
        )
    }

    /// Records logsumexp backward `dx = dy_i exp(x - lse_i)` (`lse`, `dy`: `[rows, 1]`).
    pub fn encode_logsumexp_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &GpuTensor<'_>,
        lse: &GpuTensor<'_>,
        dy: &GpuTensor<'_>,
        dx: &GpuTensor<'_>,
    ) -> Result<()> {
        self.encode_rowwise(
            encoder,
            Kernel::LogsumexpBackward,
            &[("x", x)],
            &[("lse", lse), ("dy", dy)],
            dx,
            false,
        )
    }
}
