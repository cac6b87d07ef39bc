//! Host-side validation and dispatch, one file per op family, over shared
//! machinery: row windows that respect the binding and dispatch limits,
//! error scopes, uploads and readback.

pub mod binary;
pub mod cross_entropy;
pub mod linear;
pub mod softmax;

use crate::context::GpuContext;
use crate::error::{Error, Result};
pub(crate) use crate::kernels::Params;
use crate::kernels::{
    slot, Aliasing, Hold, Kernel, Launch, Reduce, Slot, Spec, Storage, Variant, VecWidth,
    WORKGROUP_SIZE,
};
use crate::plan::Traffic;
use crate::pool::{PooledBuffer, Scratch};

const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Most records the fold of a blocked reduction walks (one workgroup, so
/// 128 per invocation: far under the 65535 loop iterations lavapipe allows an
/// invocation, and a pass of one workgroup that stays short on any GPU).
pub(crate) const FOLD_RECORDS: usize = 32_768;

/// Fewest items each lane of a blocked reduction's partial pass walks: a
/// block of 4096 rows per workgroup, so that small problems make one record.
const FOLD_MIN_SPAN: usize = 16;

/// `(fold_span, records)` of a blocked reduction over `items`: each lane of
/// the partial pass walks `fold_span` items (at least [`FOLD_MIN_SPAN`],
/// more when there are more than [`FOLD_RECORDS`] blocks of that size) and
/// each workgroup writes one of `records` records. Mirrors `fold_records` in
/// `shaders/common.wgsl`.
pub(crate) fn fold_plan(items: usize) -> (u32, usize) {
    let lanes = WORKGROUP_SIZE as usize;
    let span = items.div_ceil(FOLD_RECORDS * lanes).max(FOLD_MIN_SPAN);
    let records = items.div_ceil(span * lanes).max(1);
    (u32::try_from(span).unwrap_or(u32::MAX), records)
}

/// Which `Params` base field a matrix operand's window offset goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Base {
    A,
    B,
    C,
    D,
    Out,
}

/// A `[rows, cols]` f32 matrix operand starting `offset` elements into `buffer`.
#[derive(Clone, Copy)]
pub(crate) struct MatrixArg<'a> {
    pub binding: Slot,
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub base: Base,
    /// Element type in memory (logits and gradients may be f16).
    pub storage: Storage,
}

/// How a launch maps work to workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grid {
    /// One workgroup per row.
    PerRow,
    /// One vector of elements per invocation.
    PerElement,
}

/// One row kernel launch over `rows` rows of `cols` columns.
pub(crate) struct RowLaunch<'a> {
    pub kernel: Kernel,
    pub rows: usize,
    pub cols: usize,
    pub matrices: &'a [MatrixArg<'a>],
    pub whole: &'a [WholeArg<'a>],
    /// `row_base` is the global row of this launch's row 0.
    pub params: Params,
}

/// An operand bound whole (per-row arrays, weights, scalars).
#[derive(Clone, Copy)]
pub(crate) struct WholeArg<'a> {
    pub binding: Slot,
    pub buffer: &'a wgpu::Buffer,
    /// Byte range `(offset, size)`; `None` binds the whole buffer.
    pub range: Option<(u64, u64)>,
}

impl<'a> WholeArg<'a> {
    pub(crate) fn new(binding: Slot, buffer: &'a wgpu::Buffer) -> Self {
        Self {
            binding,
            buffer,
            range: None,
        }
    }

    /// A caller's tensor view, bound at its (aligned) offset.
    pub(crate) fn view(binding: Slot, view: &crate::tensor::GpuTensor<'a>) -> Self {
        Self {
            binding,
            buffer: view.buffer,
            range: Some((view.offset, view.bytes().max(4))),
        }
    }

    /// `limit`: the device's binding size limit. A buffer bound whole is bound
    /// up to it: pooled buffers are rounded up past the data they hold, and
    /// the data itself was checked against the limit.
    pub(crate) fn resource(&self, limit: u64) -> wgpu::BindingResource<'a> {
        match self.range {
            None if self.buffer.size() <= limit => self.buffer.as_entire_binding(),
            None => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset: 0,
                size: wgpu::BufferSize::new(limit / 4 * 4),
            }),
            Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
        }
    }
}

/// A whole-bound operand: a buffer the crate uploaded, or a caller's view.
pub(crate) enum Operand<'a> {
    Owned(wgpu::Buffer),
    View(crate::tensor::GpuTensor<'a>),
}

impl Operand<'_> {
    pub(crate) fn arg(&self, binding: Slot) -> WholeArg<'_> {
        match self {
            Operand::Owned(b) => WholeArg::new(binding, b),
            Operand::View(v) => WholeArg::view(binding, v),
        }
    }
}

/// Whether any input binding shares a buffer with an output binding.
pub(crate) fn aliasing(kernel: Kernel, bound: &[(Slot, &wgpu::Buffer)]) -> Aliasing {
    let shared = bound.iter().any(|&(rb, read)| {
        kernel.reads(rb)
            && bound
                .iter()
                .any(|&(wb, written)| !kernel.reads(wb) && written == read)
    });
    if shared {
        Aliasing::Shared
    } else {
        Aliasing::Separate
    }
}

/// Whether a row kernel can take rows that are not whole vec4s as the
/// buffer's aligned vec4s (`VecWidth::Vec4Edged`): rows of at least
/// [`EDGED_MIN_COLS`] columns, so that a vector holds lanes of at most two
/// rows (the `*_edges` pass merges those); every matrix starts at the same
/// offset modulo 4, so a row has one phase for all of them, and one of them
/// is matrix A, whose base gives that phase; and every matrix's last vector
/// lies inside its buffer, so its window can be bound whole vectors long.
fn edged_fits(rows: usize, cols: usize, matrices: &[MatrixArg<'_>]) -> bool {
    let phase = |m: &MatrixArg<'_>| m.offset % 4;
    cols >= EDGED_MIN_COLS
        && matrices.iter().any(|m| m.base == Base::A)
        && matrices.iter().all(|m| phase(m) == phase(&matrices[0]))
        && matrices.iter().all(|m| {
            let vector = 4 * m.storage.bytes();
            let end = (m.offset + rows as u64 * cols as u64) * m.storage.bytes();
            end.div_ceil(vector) * vector <= m.buffer.size()
        })
}

/// The binding of a kernel's scratch at `slot`, `bytes` of it (pooled
/// buffers may be larger than asked), or of `placeholder` where the dispatch
/// has none.
fn scratch_entry<'a>(
    slot: Slot,
    scratch: &'a Option<Scratch>,
    bytes: u64,
    placeholder: &'a wgpu::Buffer,
) -> wgpu::BindGroupEntry<'a> {
    wgpu::BindGroupEntry {
        binding: slot.index,
        resource: match scratch {
            Some(b) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: b,
                offset: 0,
                size: wgpu::BufferSize::new(bytes),
            }),
            None => placeholder.as_entire_binding(),
        },
    }
}

/// The shortest rows that run edged; shorter ones that are not whole vec4s
/// are gathered.
const EDGED_MIN_COLS: usize = 8;

fn to_u32(v: u64, what: &'static str, limit_name: &'static str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge {
        what,
        requested: v,
        limit_name,
        limit: u64::from(u32::MAX),
    })
}

impl GpuContext {
    /// Rows that fit in one binding window of `cols` f32 columns, after
    /// slack for the window's aligned start and for an edged window's end,
    /// rounded up to a whole vector (at most 16 bytes).
    pub(crate) fn rows_per_window(&self, cols: usize) -> Result<usize> {
        let row_bytes = (cols as u64)
            .checked_mul(4)
            .ok_or(Error::ShapeOverflow { rows: 1, cols })?;
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment);
        let usable = self.max_binding_bytes().saturating_sub(align + 16);
        let rows = usable / row_bytes;
        if rows == 0 {
            return Err(Error::RowTooLarge {
                cols,
                row_bytes,
                limit: self.max_binding_bytes(),
            });
        }
        Ok(usize::try_from(rows).unwrap_or(usize::MAX))
    }

    /// Checks that a buffer bound whole fits one binding.
    pub(crate) fn check_whole_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self
            .limits()
            .max_storage_buffer_binding_size
            .min(self.max_binding_bytes());
        if bytes > limit {
            return Err(Error::TooLarge {
                what,
                requested: bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit,
            });
        }
        Ok(())
    }

    /// Records a one-workgroup-per-row kernel into `encoder`, split into row
    /// windows that fit the binding and dispatch limits.
    pub(crate) fn encode_rows(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        launch: RowLaunch<'_>,
    ) -> Result<()> {
        self.encode_windows(encoder, launch, Grid::PerRow)
            .map(|_| ())
    }

    /// Records an element-wise kernel (one vector per invocation) over the
    /// same row windows. `params.row_base` is the index of this launch's first
    /// workgroup partial sum; returns the number of workgroups launched.
    pub(crate) fn encode_elements(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        launch: RowLaunch<'_>,
    ) -> Result<u64> {
        self.encode_windows(encoder, launch, Grid::PerElement)
    }

    /// Row windows `(first row, rows)` for a `[rows, cols]` problem.
    fn windows(&self, rows: usize, cols: usize) -> Result<Vec<(usize, usize)>> {
        let max_dim = self.limits().max_compute_workgroups_per_dimension.max(1) as usize;
        Ok(row_windows(rows, self.rows_per_window(cols)?, max_dim))
    }

    /// Workgroups (and so partial sums) an element-wise launch over `[rows, cols]` uses.
    /// With `VecWidth::Scalar` this is an upper bound for any layout.
    pub(crate) fn element_groups(&self, rows: usize, cols: usize, width: VecWidth) -> Result<u64> {
        let lanes = width.lanes() as u64;
        let per_group = element_group_items(lanes);
        Ok(self
            .windows(rows, cols)?
            .iter()
            .map(|&(_, n)| (n as u64 * cols as u64).div_ceil(per_group))
            .sum())
    }

    fn encode_windows(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        launch: RowLaunch<'_>,
        grid: Grid,
    ) -> Result<u64> {
        let RowLaunch {
            kernel,
            rows,
            cols,
            matrices,
            whole,
            params,
        } = launch;
        if rows == 0 {
            return Ok(0);
        }
        let offsets: Vec<u64> = matrices.iter().map(|m| m.offset).collect();
        let width = VecWidth::for_layout(cols, &offsets);
        let storage = matrices
            .iter()
            .map(|m| m.storage)
            .find(|&s| s != Storage::F32)
            .unwrap_or(Storage::F32);
        // Gathered 16-bit rows (below) are read in place by kernels that
        // store no 16-bit matrix; kernels that do run on f32 copies of each
        // window: no invocation can store half of a u32. Edged 16-bit rows
        // store whole words, and the words rows share go through the edges pass.
        let stores_half = std::iter::once(kernel)
            .chain(kernel.split_passes().iter().copied())
            .any(|k| {
                matrices
                    .iter()
                    .any(|m| m.storage.is_half() && k.writes(m.binding))
            });
        // Rows that are not whole vec4s: edged (the buffer's aligned vec4s)
        // where they can be, for the softmax family and the row losses.
        let can_edge = width == VecWidth::Scalar
            && grid == Grid::PerRow
            && kernel.family().accepts(Variant {
                width: VecWidth::Vec4Edged,
                aliasing: Aliasing::Separate,
                storage,
                reduce: Reduce::Workgroup,
                hold: Hold::F32,
            });
        if can_edge
            && rows > 1
            && !edged_fits(rows, cols, matrices)
            && edged_fits(rows - 1, cols, matrices)
        {
            // Only the last row's last vector runs past its buffer (a view
            // of exactly the data, say): every row but it edged, it
            // gathered, which splits it into the same vectors (same bits).
            self.encode_windows(
                encoder,
                RowLaunch {
                    rows: rows - 1,
                    ..launch
                },
                grid,
            )?;
            let skip = (rows as u64 - 1) * cols as u64;
            let last: Vec<MatrixArg<'_>> = matrices
                .iter()
                .map(|m| MatrixArg {
                    offset: m.offset + skip,
                    ..*m
                })
                .collect();
            let params = Params {
                row_base: to_u32(
                    u64::from(params.row_base) + rows as u64 - 1,
                    "row index",
                    "u32 rows",
                )?,
                ..params
            };
            return self.encode_windows(
                encoder,
                RowLaunch {
                    rows: 1,
                    matrices: &last,
                    params,
                    ..launch
                },
                grid,
            );
        }
        let edged = can_edge && edged_fits(rows, cols, matrices);
        let staged = storage.is_half() && width == VecWidth::Scalar && !edged && stores_half;
        let most_rows = self
            .windows(rows, cols)?
            .iter()
            .map(|w| w.1)
            .max()
            .unwrap_or(1);
        let stages: Vec<Option<Scratch>> = matrices
            .iter()
            .map(|m| {
                (staged && m.storage.is_half()).then(|| {
                    self.scratch(
                        "wgpu-loss 16-bit staging",
                        most_rows as u64 * cols as u64 * 4,
                    )
                })
            })
            .collect();
        let storage = if staged { Storage::F32 } else { storage };
        // Else gathered: four scalar loads a vector.
        let gathered = Variant {
            width: VecWidth::Vec4Gathered,
            aliasing: Aliasing::Separate,
            storage,
            reduce: Reduce::Workgroup,
            hold: Hold::F32,
        };
        let width = match width {
            VecWidth::Scalar if edged => VecWidth::Vec4Edged,
            VecWidth::Scalar if grid == Grid::PerRow && kernel.family().accepts(gathered) => {
                VecWidth::Vec4Gathered
            }
            w => w,
        };
        let bound: Vec<(Slot, &wgpu::Buffer)> = matrices
            .iter()
            .zip(&stages)
            .map(|(m, st)| (m.binding, st.as_deref().unwrap_or(m.buffer)))
            .chain(whole.iter().map(|w| (w.binding, w.buffer)))
            .collect();
        // How rows read once are held: packed 16-bit where the tuning says
        // and the kernel has the variant (row kernels over vec4 rows).
        let hold = {
            let packed = Variant {
                width,
                aliasing: Aliasing::Separate,
                storage,
                reduce: Reduce::Workgroup,
                hold: Hold::Packed,
            };
            match self.row_tuning().hold(storage) {
                Hold::Packed if grid == Grid::PerRow && kernel.family().accepts(packed) => {
                    Hold::Packed
                }
                _ => Hold::F32,
            }
        };
        // Few rows of a huge C: each row in `splits` chunks, a partial pass
        // for the chunks' statistics, then the kernel itself over each chunk.
        let vecs = width.row_vectors(cols);
        // Vectors a lane holds of each matrix the kernel holds; a kernel
        // that holds two gets the lanes of twice its vectors where the
        // tuning says (`RowTuning::hold_pairs`).
        let held_each = hold.vectors() / kernel.held_matrices();
        let launch_vecs = |v: u64| {
            if self.row_tuning().hold_pairs {
                v * kernel.held_matrices()
            } else {
                v
            }
        };
        let splits = match grid {
            Grid::PerRow if kernel.splits_rows() => {
                // A kernel that holds two matrices keeps whole the rows it
                // holds on its launch's lanes (below); other rows split as
                // any kernel's, by what a lane holds of each matrix.
                let pair_lanes = self.row_plan(launch_vecs(vecs)).0.threads_per_row;
                let pair_held = kernel.held_matrices() > 1
                    && crate::tuning::rows_held(
                        vecs,
                        width.unheld_vectors(),
                        u64::from(pair_lanes),
                        held_each,
                    );
                if pair_held {
                    1
                } else {
                    self.row_tuning().splits_holding(
                        rows as u64,
                        vecs,
                        held_each,
                        width.unheld_vectors(),
                    )
                }
            }
            _ => 1,
        };
        // Rows held in registers (`holds_rows()`), for the traffic plan.
        let mut held = false;
        let (launch, reduce) = match grid {
            Grid::PerRow => {
                let chunk = vecs.div_ceil(u64::from(splits));
                let plan = self.row_plan(launch_vecs(chunk));
                let per_thread = plan.0.vectors_per_thread(chunk);
                held = splits == 1
                    && crate::tuning::rows_held(
                        chunk,
                        width.unheld_vectors(),
                        u64::from(plan.0.threads_per_row),
                        held_each,
                    );
                if per_thread > crate::tuning::MAX_VECTORS_PER_THREAD {
                    return Err(Error::RowTooLong {
                        cols,
                        threads: plan.0.threads_per_row,
                        per_invocation: per_thread,
                        limit: crate::tuning::MAX_VECTORS_PER_THREAD,
                    });
                }
                plan
            }
            Grid::PerElement => (Launch::WHOLE_WORKGROUP, Reduce::Workgroup),
        };
        let variant = Variant {
            width,
            aliasing: aliasing(kernel, &bound),
            storage,
            reduce,
            hold,
        };
        let spec = Spec::for_kernel(kernel, &params).streamed_unless(kernel, held);
        let pipeline = self.pipeline(kernel, variant, launch, spec)?;
        let mut passes = Vec::new();
        if splits > 1 {
            for &k in kernel.split_passes() {
                passes.push((
                    self.pipeline(k, variant, launch, Spec::for_kernel(k, &params))?,
                    k,
                ));
            }
        }
        passes.push((pipeline, kernel));
        let windows = self.windows(rows, cols)?;
        // One record (max, sum, extra, 0) per chunk of the largest window.
        let most = windows.iter().map(|w| w.1).max().unwrap_or(1) as u64;
        let partial_bytes = (most * u64::from(splits) * 16).max(16);
        let partials = match splits > 1 && !kernel.split_passes().is_empty() {
            true => Some(self.scratch("wgpu-loss split-row partials", partial_bytes)),
            false => None,
        };
        // Edged rows' shared vectors: two f32 vectors a row of the largest
        // window, merged into each matrix a kernel wrote by its `*_edges` pass.
        let binds_edges = |k: Kernel| k.bindings().iter().any(|&(b, _)| b == slot::EDGE_VECS);
        let edge_bytes = most * 32;
        let edges = (width == VecWidth::Vec4Edged && passes.iter().any(|&(_, k)| binds_edges(k)))
            .then(|| self.scratch("wgpu-loss edged rows' shared vectors", edge_bytes));
        let mut edge_passes = Vec::new();
        if edges.is_some() {
            for m in matrices {
                if let Some(k) = passes
                    .iter()
                    .any(|&(_, k)| k.writes(m.binding))
                    .then(|| Kernel::edges_into(m.binding))
                    .flatten()
                {
                    let pipeline =
                        self.pipeline(k, variant, Launch::WHOLE_WORKGROUP, Spec::GENERIC)?;
                    edge_passes.push((pipeline, k));
                }
            }
        }
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment);
        let max_dim = self.limits().max_compute_workgroups_per_dimension.max(1);
        let cols64 = cols as u64;
        let per_group = element_group_items(width.lanes() as u64);
        let mut groups_done = 0u64;
        for (r0, n) in windows {
            let groups = match grid {
                Grid::PerRow => {
                    (n as u64 * u64::from(splits)).div_ceil(u64::from(launch.rows_per_workgroup()))
                }
                Grid::PerElement => (n as u64 * cols64).div_ceil(per_group),
            };
            let mut p = params;
            p.rows = n as u32;
            p.splits = splits;
            p.cols = to_u32(cols64, "row length", "u32 columns")?;
            let first = match grid {
                Grid::PerRow => r0 as u64,
                Grid::PerElement => groups_done,
            };
            p.row_base = to_u32(u64::from(params.row_base) + first, "row index", "u32 rows")?;
            let mut ranges = Vec::with_capacity(matrices.len());
            // (matrix, its staging buffer, byte range, element base) of staged matrices.
            let mut staged_windows = Vec::new();
            for (m, stage) in matrices.iter().zip(&stages) {
                let eb = m.storage.bytes();
                let start = m.offset + r0 as u64 * cols64;
                let start_bytes = start * eb / align * align;
                // Bindings are whole 4-byte words; f16 views are checked to have
                // room. Edged windows end on a whole vector (`edged_fits`).
                let word = if width == VecWidth::Vec4Edged {
                    4 * eb
                } else {
                    4
                };
                let end_bytes = ((start + n as u64 * cols64) * eb).div_ceil(word) * word;
                let mut base = (start - start_bytes / eb) as u32;
                if let Some(stage) = stage {
                    staged_windows.push((m, stage, (start_bytes, end_bytes - start_bytes), base));
                    base = 0;
                }
                match m.base {
                    Base::A => p.base_a = base,
                    Base::B => p.base_b = base,
                    Base::C => p.base_c = base,
                    Base::D => p.base_d = base,
                    Base::Out => p.base_out = base,
                }
                ranges.push(match stage {
                    Some(_) => (0, n as u64 * cols64 * 4),
                    None => (start_bytes, end_bytes - start_bytes),
                });
            }
            let window_elems = n as u64 * cols64;
            for &(m, stage, range, base) in &staged_windows {
                if !kernel.stores_only(m.binding) {
                    self.encode_half_stage(
                        encoder,
                        Kernel::HalfWiden,
                        m.storage,
                        (m.buffer, range, base),
                        (stage, None, 0),
                        window_elems,
                    )?;
                }
            }
            let uniform = self.params_buffer("wgpu-loss params", &p);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: slot::PARAMS.index,
                resource: uniform.as_entire_binding(),
            }];
            for ((m, stage), &(offset, size)) in matrices.iter().zip(&stages).zip(&ranges) {
                entries.push(wgpu::BindGroupEntry {
                    binding: m.binding.index,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: stage.as_deref().unwrap_or(m.buffer),
                        offset,
                        size: wgpu::BufferSize::new(size),
                    }),
                });
            }
            for w in whole {
                entries.push(wgpu::BindGroupEntry {
                    binding: w.binding.index,
                    resource: w.resource(self.limits().max_storage_buffer_binding_size),
                });
            }
            if kernel
                .bindings()
                .iter()
                .any(|&(b, _)| b == slot::CHUNK_STATS)
            {
                entries.push(scratch_entry(
                    slot::CHUNK_STATS,
                    &partials,
                    partial_bytes,
                    &self.placeholder_rw,
                ));
            }
            if passes.iter().any(|&(_, k)| binds_edges(k)) {
                entries.push(scratch_entry(
                    slot::EDGE_VECS,
                    &edges,
                    edge_bytes,
                    &self.placeholder_edges,
                ));
            }
            let gx = to_u32(groups, "workgroups", "u32 workgroups")?.min(max_dim);
            let gy = to_u32(groups, "workgroups", "u32 workgroups")?.div_ceil(gx);
            let matrix_elems = n as u64 * cols64;
            let matrix_bytes: Vec<u64> = matrices
                .iter()
                .zip(&stages)
                .map(|(m, st)| matrix_elems * if st.is_some() { 4 } else { m.storage.bytes() })
                .collect();
            let items_per_workgroup = match grid {
                Grid::PerRow => {
                    u64::from(launch.rows_per_workgroup())
                        * vecs.div_ceil(u64::from(splits))
                        * width.lanes() as u64
                }
                Grid::PerElement => per_group,
            };
            for (pipe, k) in passes.iter().map(|(p, k)| (p, *k)) {
                let mut traffic = Traffic {
                    items_per_workgroup,
                    load_bytes: width.load_bytes(storage),
                    ..Traffic::default()
                };
                for (m, &bytes) in matrices.iter().zip(&matrix_bytes) {
                    if k.bindings().iter().any(|&(b, _)| b == m.binding) {
                        traffic.bytes_read += bytes * k.matrix_reads(m.binding, held, splits > 1);
                        traffic.bytes_written += bytes * u64::from(k.writes(m.binding));
                    }
                }
                for w in whole {
                    let (r, wr) = k.row_bytes(w.binding);
                    traffic.bytes_read += r * n as u64;
                    traffic.bytes_written += wr * n as u64;
                    // Class weights: once per dispatch (caches hold them).
                    if w.binding == slot::cross_entropy::WEIGHTS
                        && p.flags & crate::kernels::flags::cross_entropy::FLAG_WEIGHTS != 0
                    {
                        traffic.bytes_read += cols64 * 4;
                    }
                }
                // Split rows: one record per chunk, written by the partial
                // pass, read by the pass after it.
                if splits > 1 && k.bindings().iter().any(|&(b, _)| b == slot::CHUNK_STATS) {
                    let records = n as u64 * u64::from(splits) * 16;
                    if kernel.split_passes().first() == Some(&k) {
                        traffic.bytes_written += records;
                    } else {
                        traffic.bytes_read += records;
                    }
                }
                self.record_pass(encoder, pipe, k, &entries, (gx, gy));
                self.plan.note(k.entry_point(), groups, traffic);
            }
            // Edged rows: the shared vectors, one invocation a row.
            for (pipe, k) in &edge_passes {
                let edge_groups = (n as u64).div_ceil(u64::from(WORKGROUP_SIZE));
                let (ex, ey) = self.grid(edge_groups as usize)?;
                self.record_pass(encoder, pipe, *k, &entries, (ex, ey));
                // The records in; at most two vectors a row read and written.
                let vector = width.load_bytes(storage);
                self.plan.note(
                    k.entry_point(),
                    edge_groups,
                    Traffic {
                        items_per_workgroup: u64::from(WORKGROUP_SIZE),
                        bytes_read: n as u64 * (32 + 2 * vector),
                        bytes_written: n as u64 * 2 * vector,
                        load_bytes: vector,
                    },
                );
            }
            for &(m, stage, range, base) in &staged_windows {
                if passes.iter().any(|&(_, k)| k.writes(m.binding)) {
                    self.encode_half_stage(
                        encoder,
                        Kernel::HalfNarrow,
                        m.storage,
                        (m.buffer, range, base),
                        (stage, None, 0),
                        window_elems,
                    )?;
                }
            }
            groups_done += groups;
        }
        Ok(groups_done)
    }

    /// Records one compute pass of `kernel` over `groups` workgroups, bound
    /// to the entries its layout names (a split row's partial pass, or the
    /// edges pass, binds a subset of the row kernel's).
    fn record_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipe: &crate::kernels::Pipeline,
        kernel: Kernel,
        entries: &[wgpu::BindGroupEntry<'_>],
        (gx, gy): (u32, u32),
    ) {
        let used: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .filter(|e| kernel.bindings().iter().any(|&(b, _)| b.index == e.binding))
            .cloned()
            .collect();
        self.run_dispatch(encoder, kernel.entry_point(), pipe, &used, (gx, gy));
    }

    /// Creates the bind group of one dispatch and records it in a compute
    /// pass of its own: every dispatch the crate records goes through here,
    /// so the bind groups are counted ([`crate::EncodeBuffers`]) and a
    /// [`crate::GpuContext::prepare`] open on `encoder` keeps them.
    pub(crate) fn run_dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipe: &crate::kernels::Pipeline,
        entries: &[wgpu::BindGroupEntry<'_>],
        (gx, gy): (u32, u32),
    ) {
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipe.layout,
            entries,
        });
        self.uniforms.count_bind_group();
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
        drop(pass);
        self.captures
            .note(encoder, label, &pipe.pipeline, &bind_group, (gx, gy));
    }

    /// Records a blocked reduction over `items` (see `fold_records` in
    /// `shaders/common.wgsl`): `partial` over blocks of them, writing one
    /// record per block into scratch, then `fold`, one workgroup, over those
    /// records (at most [`FOLD_RECORDS`]). `partial_args` and `fold_args` are
    /// each kernel's bindings besides the records.
    /// `item_bytes`: what the partial pass reads per item (the traffic plan).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_blocked_reduction(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (partial, fold): (Kernel, Kernel),
        width: VecWidth,
        partial_args: &[WholeArg<'_>],
        fold_args: &[WholeArg<'_>],
        params: Params,
        (items, item_bytes): (usize, u64),
    ) -> Result<()> {
        let (fold_span, records) = fold_plan(items);
        let span = u64::from(fold_span) * u64::from(WORKGROUP_SIZE);
        let stats = self.scratch("blocked reduction records", records as u64 * 16);
        let params = Params {
            fold_span,
            ..params
        };
        // The partial pass binds the fold's outputs too: as the only block
        // it finishes the reduction itself (`single_block`), and no fold runs.
        let mut args = partial_args.to_vec();
        args.extend_from_slice(fold_args);
        args.push(WholeArg::new(slot::CHUNK_STATS, &stats));
        let traffic = Traffic {
            items_per_workgroup: span.min(items as u64),
            bytes_read: items as u64 * item_bytes,
            bytes_written: records as u64 * 16,
            load_bytes: 0,
        };
        self.encode_grid(
            encoder,
            partial,
            width,
            &args,
            params,
            self.grid(records)?,
            traffic,
        )?;
        if records == 1 {
            return Ok(());
        }
        let mut args = fold_args.to_vec();
        args.push(WholeArg::new(slot::CHUNK_STATS, &stats));
        let traffic = Traffic {
            items_per_workgroup: records as u64,
            bytes_read: records as u64 * 16,
            bytes_written: 16,
            load_bytes: 0,
        };
        self.encode_single(encoder, fold, width, &args, params, traffic)
    }

    /// Records `half_widen` or `half_narrow` (`shaders/copy.wgsl`) between
    /// elements `[base, base + elems)` of the 16-bit window `range` of
    /// `packed` (f16 or bf16, as `storage` says) and f32 elements
    /// `[wide_base, wide_base + elems)` of `wide` (bound whole, or at
    /// `wide_range`).
    pub(crate) fn encode_half_stage(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        storage: Storage,
        (packed, (offset, size), base): (&wgpu::Buffer, (u64, u64), u32),
        (wide, wide_range, wide_base): (&wgpu::Buffer, Option<(u64, u64)>, u32),
        elems: u64,
    ) -> Result<()> {
        let words = (u64::from(base) + elems).div_ceil(2) - u64::from(base) / 2;
        let groups =
            usize::try_from(words.div_ceil(u64::from(WORKGROUP_SIZE))).unwrap_or(usize::MAX);
        let params = Params {
            base_out: base,
            base_a: wide_base,
            cols: to_u32(elems, "16-bit window elements", "u32 elements")?,
            flags: if storage == Storage::F16 {
                crate::kernels::flags::copy::FLAG_F16
            } else {
                0
            },
            ..Params::default()
        };
        let args = [
            WholeArg {
                binding: slot::copy::PACKED,
                buffer: packed,
                range: Some((offset, size)),
            },
            WholeArg {
                binding: slot::copy::WIDE,
                buffer: wide,
                range: wide_range,
            },
        ];
        // Widen reads the words and writes f32; narrow reads f32 and the
        // words, and writes the words.
        let (packed_bytes, wide_bytes) = (words * 4, elems * 4);
        let widen = kernel == Kernel::HalfWiden;
        let traffic = Traffic {
            items_per_workgroup: u64::from(WORKGROUP_SIZE) * 2,
            bytes_read: if widen {
                packed_bytes
            } else {
                packed_bytes + wide_bytes
            },
            bytes_written: if widen { wide_bytes } else { packed_bytes },
            load_bytes: 4,
        };
        self.encode_grid(
            encoder,
            kernel,
            VecWidth::Scalar,
            &args,
            params,
            self.grid(groups)?,
            traffic,
        )
    }

    /// Workgroups `(x, y)` for `groups` of them, `x` at most the dispatch
    /// limit (kernels index them with `row_of`).
    pub(crate) fn grid(&self, groups: usize) -> Result<(u32, u32)> {
        let max_dim = self.limits().max_compute_workgroups_per_dimension.max(1) as usize;
        let gx = groups.clamp(1, max_dim);
        let gy = groups.div_ceil(gx).max(1);
        if gy > max_dim {
            return Err(Error::TooLarge {
                what: "workgroups of one dispatch",
                requested: groups as u64,
                limit_name: "max_compute_workgroups_per_dimension squared",
                limit: (max_dim * max_dim) as u64,
            });
        }
        Ok((gx as u32, gy as u32))
    }

    /// Records a single-workgroup kernel (the folds of blocked reductions).
    pub(crate) fn encode_single(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        width: VecWidth,
        whole: &[WholeArg<'_>],
        params: Params,
        traffic: Traffic,
    ) -> Result<()> {
        self.encode_grid(encoder, kernel, width, whole, params, (1, 1), traffic)
    }

    /// Records a kernel over `groups` workgroups of `WORKGROUP_SIZE` whose
    /// buffers are bound whole; `traffic` is what the caller knows it moves
    /// (the traffic plan).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_grid(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        width: VecWidth,
        whole: &[WholeArg<'_>],
        params: Params,
        groups: (u32, u32),
        traffic: Traffic,
    ) -> Result<()> {
        let bound: Vec<(Slot, &wgpu::Buffer)> =
            whole.iter().map(|w| (w.binding, w.buffer)).collect();
        let variant = Variant {
            width,
            aliasing: aliasing(kernel, &bound),
            storage: Storage::F32,
            reduce: Reduce::Workgroup,
            hold: Hold::F32,
        };
        let pipeline = self.pipeline(
            kernel,
            variant,
            Launch::WHOLE_WORKGROUP,
            Spec::for_kernel(kernel, &params),
        )?;
        let uniform = self.params_buffer("wgpu-loss params", &params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: slot::PARAMS.index,
            resource: uniform.as_entire_binding(),
        }];
        for w in whole {
            entries.push(wgpu::BindGroupEntry {
                binding: w.binding.index,
                resource: w.resource(self.limits().max_storage_buffer_binding_size),
            });
        }
        self.run_dispatch(encoder, kernel.entry_point(), &pipeline, &entries, groups);
        self.plan.note(
            kernel.entry_point(),
            u64::from(groups.0) * u64::from(groups.1),
            traffic,
        );
        Ok(())
    }

    /// Records a copy of the first `elems` f32 values of `src` into `dst`
    /// with the copy kernel (`shaders/copy.wgsl`, one vector per invocation):
    /// the bandwidth yardstick `wgpu-loss bench` measures every op against.
    /// Not `copy_buffer_to_buffer`, because the yardstick must be a shader.
    pub fn encode_copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        elems: usize,
    ) -> Result<()> {
        let bytes = (elems as u64).saturating_mul(4);
        for (name, buffer) in [("copy source", src), ("copy destination", dst)] {
            if buffer.size() < bytes {
                return Err(Error::InvalidView {
                    name,
                    problem: format!("holds {} bytes, {bytes} needed", buffer.size()),
                });
            }
            if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::InvalidView {
                    name,
                    problem: format!("buffer usage {:?} lacks STORAGE", buffer.usage()),
                });
            }
        }
        self.scoped_now("copy", || {
            self.encode_copy_checked(encoder, src, dst, elems)
        })
    }

    fn encode_copy_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        elems: usize,
    ) -> Result<()> {
        let width = VecWidth::for_layout(elems, &[0]);
        let pipeline = self.pipeline(
            Kernel::Copy,
            Variant {
                width,
                aliasing: aliasing(
                    Kernel::Copy,
                    &[(slot::copy::SRC, src), (slot::copy::DST, dst)],
                ),
                storage: Storage::F32,
                reduce: Reduce::Workgroup,
                hold: Hold::F32,
            },
            Launch::WHOLE_WORKGROUP,
            Spec::GENERIC,
        )?;
        let max_dim = self.limits().max_compute_workgroups_per_dimension.max(1) as u64;
        let per_group = u64::from(crate::kernels::WORKGROUP_SIZE) * width.lanes() as u64;
        // Whole workgroups' worth of vectors per window, within the binding size.
        let window = (self.max_binding_bytes() / 4 / per_group * per_group).max(per_group);
        let mut start = 0u64;
        while start < elems as u64 {
            let n = window.min(elems as u64 - start);
            let params = Params {
                cols: n as u32,
                ..Params::default()
            };
            let uniform = self.params_buffer("copy params", &params);
            let range = |b| wgpu::BufferBinding {
                buffer: b,
                offset: start * 4,
                size: wgpu::BufferSize::new(n * 4),
            };
            let groups = n.div_ceil(per_group);
            let gx = groups.min(max_dim);
            let gy = groups.div_ceil(gx);
            self.run_dispatch(
                encoder,
                Kernel::Copy.entry_point(),
                &pipeline,
                &[
                    wgpu::BindGroupEntry {
                        binding: slot::PARAMS.index,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: slot::copy::SRC.index,
                        resource: wgpu::BindingResource::Buffer(range(src)),
                    },
                    wgpu::BindGroupEntry {
                        binding: slot::copy::DST.index,
                        resource: wgpu::BindingResource::Buffer(range(dst)),
                    },
                ],
                (gx as u32, gy as u32),
            );
            self.plan.note(
                Kernel::Copy.entry_point(),
                groups,
                Traffic {
                    items_per_workgroup: per_group,
                    bytes_read: n * 4,
                    bytes_written: n * 4,
                    load_bytes: width.load_bytes(Storage::F32),
                },
            );
            start += n;
        }
        Ok(())
    }

    /// The uniform buffer holding `params`: made the first time these
    /// parameters are seen, then shared, since nothing writes it again. Its
    /// one queue write lands before any submission that can use it. Not
    /// `create_buffer_init`: that panics when the device is lost; a queue
    /// write just fails quietly and the error scope or the lost-device check
    /// reports it.
    pub(crate) fn params_buffer(&self, label: &str, params: &Params) -> wgpu::Buffer {
        let key = bytemuck::bytes_of(params).to_vec();
        self.uniforms.get_or_make(key, |bytes| {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.len() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.queue.write_buffer(&buffer, 0, bytes);
            buffer
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes and awaits
    /// them, turning a captured error into [`Error::Gpu`] naming `what`.
    /// Errors an earlier `encode_*` call could not report yet come first.
    pub(crate) async fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_errors().await?;
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let out = f();
        let (oom, validation) = (oom.pop(), validation.pop());
        let (oom, validation) = (oom.await, validation.await);
        self.scope_result(what, out, oom.or(validation))
    }

    /// [`GpuContext::scoped`] for calls that must not wait (`encode_*`): a
    /// scope whose answer is known now (native backends) is reported by this
    /// call; one that is not (the browser) by the next awaited call.
    pub(crate) fn scoped_now<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_not_lost()?;
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let out = f();
        let mut error = None;
        for popped in [oom.pop(), validation.pop()] {
            match crate::scope::pop_now(popped) {
                Ok(e) => error = error.or(e),
                Err(pending) => self.deferred.push(what.to_string(), pending),
            }
        }
        self.scope_result(what, out, error)
    }

    fn scope_result<T>(&self, what: &str, out: Result<T>, error: Option<wgpu::Error>) -> Result<T> {
        if out.is_err() || error.is_some() {
            // wgpu runs the device-lost callback from poll; a lost device
            // explains whatever else failed, so report that first.
            let _ = self.device.poll(wgpu::PollType::Poll);
            self.check_not_lost()?;
        }
        let out = out?;
        if let Some(e) = error {
            return Err(Error::Gpu {
                kernel: what.to_string(),
                adapter: self.adapter_name().to_string(),
                message: e.to_string(),
            });
        }
        Ok(out)
    }

    /// A pooled buffer whose size class never exceeds the device's `max_buffer_size`.
    fn pooled(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> PooledBuffer<'_> {
        self.pool.take(
            &self.device,
            label,
            bytes,
            usage,
            self.limits().max_buffer_size,
        )
    }

    /// A pooled storage buffer holding `data` (host API only: it goes back to
    /// the pool when dropped, so it must not outlive the call's GPU work).
    pub(crate) fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> PooledBuffer<'_> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buffer = self.pooled(label, bytes.len() as u64, STORAGE_USAGE);
        // Queue writes move whole 4-byte words: an odd count of 16-bit values gets a pad.
        let padded;
        let bytes = if bytes.len().is_multiple_of(4) {
            bytes
        } else {
            padded = [bytes, &[0u8; 3][..4 - bytes.len() % 4]].concat();
            &padded[..]
        };
        if !bytes.is_empty() {
            self.queue.write_buffer(&buffer, 0, bytes);
        }
        buffer
    }

    /// A pooled output buffer for `elems` matrix values of `dtype` (host API
    /// only), poisoned like [`GpuContext::output`].
    pub(crate) fn matrix_output(
        &self,
        label: &str,
        elems: usize,
        dtype: crate::tensor::DType,
    ) -> PooledBuffer<'_> {
        self.output(label, (elems as u64 * dtype.size()).div_ceil(4) as usize)
    }

    /// Reads back `len` matrix values of `F` from `staging`, widened to f32.
    pub(crate) async fn read_back_widened<F: crate::tensor::HostFloat>(
        &self,
        staging: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>> {
        let values = self.read_back::<F>(staging, len).await?;
        Ok(values.into_iter().map(F::widen).collect())
    }

    /// Fills `buffer` with the context's poison, if it has one
    /// ([`crate::ContextOptions::poison_outputs`]).
    fn poison_fill(&self, buffer: &wgpu::Buffer) {
        if let Some(poison) = self.poison {
            let fill = vec![poison; buffer.size() as usize / 4];
            self.queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(&fill));
        }
    }

    /// A pooled storage buffer for `elems` f32 outputs (host API only),
    /// poisoned when the context was created with
    /// [`crate::ContextOptions::poison_outputs`].
    pub(crate) fn output(&self, label: &str, elems: usize) -> PooledBuffer<'_> {
        let buffer = self.pooled(label, elems as u64 * 4, STORAGE_USAGE);
        self.poison_fill(&buffer);
        buffer
    }

    /// A storage buffer of at least `bytes` bytes from the encode pool, for
    /// scratch that an `encode_*` call's own passes write before they read
    /// it (see [`Scratch`] for why reuse needs no wait).
    pub(crate) fn scratch(&self, label: &str, bytes: u64) -> Scratch {
        Scratch::take(
            &self.encode_pool,
            &self.device,
            label,
            bytes.max(16).div_ceil(16) * 16,
            STORAGE_USAGE,
            self.limits().max_buffer_size,
        )
    }

    /// A new storage buffer, not pooled: for contents the queue writes, and
    /// the fused linear + cross-entropy's workspaces (whose gradient shadows
    /// may be read before this call writes them).
    pub(crate) fn fresh_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.uniforms.count_scratch();
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).div_ceil(16) * 16,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data` that nothing writes, shared by every
    /// call that asks for the same contents.
    pub(crate) fn constant_buffer<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Scratch {
        let key = bytemuck::cast_slice::<T, u8>(data).to_vec();
        Scratch::shared(self.constants.get_or_make(key, |bytes| {
            let buffer = self.fresh_buffer(label, bytes.len() as u64);
            self.queue.write_buffer(&buffer, 0, bytes);
            buffer
        }))
    }

    /// A new (unpooled) buffer for `elems` f32 outputs, poisoned like [`GpuContext::output`].
    pub(crate) fn fresh_output(&self, label: &str, elems: usize) -> wgpu::Buffer {
        let buffer = self.fresh_buffer(label, elems as u64 * 4);
        self.poison_fill(&buffer);
        buffer
    }

    /// Pooled scratch for `elems` f32 outputs, poisoned like [`GpuContext::output`].
    pub(crate) fn scratch_output(&self, label: &str, elems: usize) -> Scratch {
        let buffer = self.scratch(label, elems as u64 * 4);
        self.poison_fill(&buffer);
        buffer
    }

    /// A new buffer holding `data`, written through the queue, so never
    /// pooled scratch (another call's passes could run between the write and
    /// this call's reads).
    pub(crate) fn scratch_with<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let buffer = self.fresh_buffer(label, std::mem::size_of_val(data) as u64);
        if !data.is_empty() {
            self.queue
                .write_buffer(&buffer, 0, bytemuck::cast_slice(data));
        }
        buffer
    }

    /// Records a copy of `bytes` bytes from `src` into a pooled mappable buffer.
    pub(crate) fn stage(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        bytes: u64,
    ) -> PooledBuffer<'_> {
        let size = bytes.max(4).div_ceil(4) * 4;
        let staging = self.pooled(
            "wgpu-loss readback",
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        staging
    }

    pub(crate) fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Maps a staging buffer and copies out `len` values of `T`, awaiting
    /// the mapping: on native a thread of the context's polls the device
    /// while mappings are pending; in the browser the event loop resolves it.
    pub(crate) async fn read_back<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>> {
        let readback_err = |message: String| Error::Readback {
            adapter: self.adapter_name().to_string(),
            message,
        };
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver only goes away if the caller stopped waiting.
            let _ = sender.send(r);
        });
        self.poll_until_idle().await;
        match receiver.receive().await {
            Some(Ok(())) => {}
            // A lost device fails the mapping: say so, where it is known.
            Some(Err(e)) => {
                self.check_not_lost()?;
                return Err(readback_err(e.to_string()));
            }
            None => {
                self.check_not_lost()?;
                return Err(readback_err("map callback dropped (device lost?)".into()));
            }
        }
        let out = match staging.get_mapped_range(..) {
            Err(e) => Err(readback_err(e.to_string())),
            Ok(view) => {
                let bytes = len * std::mem::size_of::<T>();
                if view.len() < bytes {
                    Err(readback_err(format!(
                        "staging buffer holds {} bytes, {bytes} expected",
                        view.len()
                    )))
                } else {
                    Ok(bytemuck::pod_collect_to_vec(&view[..bytes]))
                }
            }
        };
        // Unmapped on every path, so a pooled staging buffer goes back usable.
        staging.unmap();
        out
    }
}

/// `(first row, row count)` windows covering `rows`, each at most
/// `rows_per_window` rows and `max_dim²` workgroups. Every window is bound at
/// its own offset and indexed from 0, which is what keeps WGSL's `u32` element
/// indices in range for any total size: a window holds at most one binding
/// (capped at 1 GiB, 2^28 f32).
/// Elements one workgroup of an element-wise kernel covers: each of its
/// `WORKGROUP_SIZE` invocations walks `kernels::ELEMENT_VECTORS` vectors of
/// `lanes` elements, so one workgroup-memory sum (its barriers cost lavapipe
/// a switch of every invocation) serves that many.
pub(crate) fn element_group_items(lanes: u64) -> u64 {
    u64::from(WORKGROUP_SIZE) * lanes * u64::from(crate::kernels::ELEMENT_VECTORS)
}

pub(crate) fn row_windows(
    rows: usize,
    rows_per_window: usize,
    max_dim: usize,
) -> Vec<(usize, usize)> {
    let per_window = rows_per_window.min(max_dim.saturating_mul(max_dim)).max(1);
    (0..rows)
        .step_by(per_window)
        .map(|r0| (r0, per_window.min(rows - r0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{fold_plan, row_windows, FOLD_RECORDS};
    use crate::kernels::WORKGROUP_SIZE;

    /// 2^33 f32 elements (32 GiB, more than any one buffer here can hold, so
    /// only the plan can be tested on this machine): every window's element
    /// count and byte span stay far inside u32, and the windows tile the rows.
    #[test]
    fn blocked_reductions_fold_at_most_32768_records_and_cover_every_item() {
        let lanes = WORKGROUP_SIZE as usize;
        for items in [
            0,
            1,
            4095,
            4096,
            4097,
            1 << 22,
            FOLD_RECORDS * 4096,
            FOLD_RECORDS * 4096 + 1,
            (u32::MAX as usize) - 1,
            u32::MAX as usize,
        ] {
            let (span, records) = fold_plan(items);
            let block = span as usize * lanes;
            assert!(records <= FOLD_RECORDS, "{items} items: {records} records");
            assert!(
                records * block >= items,
                "{items} items: {records} x {block} miss some"
            );
            assert!(
                records == 1 || (records - 1) * block < items,
                "{items} items: record {records} would be empty"
            );
            // What the fold walks (`fold_records` in common.wgsl, in u32).
            let n = items as u32;
            let s = (block as u32).max(1);
            let shader = (n / s + u32::from(!n.is_multiple_of(s))).max(1) as usize;
            assert_eq!(shader, records, "{items} items");
        }
    }

    #[test]
    fn windows_keep_u32_indices_for_more_than_u32_elements() {
        let (rows, cols) = (1usize << 20, 1usize << 13);
        let binding = 1u64 << 30; // the crate's cap on one binding
        let rows_per_window = (binding / (cols as u64 * 4)) as usize;
        let windows = row_windows(rows, rows_per_window, 65_535);
        let mut next = 0;
        for &(r0, n) in &windows {
            assert_eq!(r0, next, "windows must tile the rows in order");
            let elems = n as u64 * cols as u64;
            assert!(
                elems * 4 <= binding,
                "window of {n} rows exceeds one binding"
            );
            assert!(
                elems < u64::from(u32::MAX) / 4,
                "window indices near u32::MAX"
            );
            next = r0 + n;
        }
        assert_eq!(next, rows);
        assert!((rows as u64) * (cols as u64) > u64::from(u32::MAX));
        // The dispatch limit caps a window too.
        assert!(row_windows(10, 1000, 2).iter().all(|&(_, n)| n <= 4));
    }

    /// A context on the default adapter, or `None` after a skip line
    /// (outside CI: under `CI=true` a missing adapter fails).
    fn gpu() -> Option<crate::GpuContext> {
        match crate::block_on(crate::GpuContext::with_options(Default::default())) {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                    "CI=true but no GPU adapter: {e}"
                );
                eprintln!("SKIPPED (no GPU adapter: {e})");
                None
            }
        }
    }

    /// Runs `half_widen` or `half_narrow` over elements `[base, base + elems)`
    /// of `packed` and `[wide_base, wide_base + elems)` of `wide`; returns
    /// both buffers after.
    #[allow(clippy::too_many_arguments)]
    fn run_half_stage(
        ctx: &crate::GpuContext,
        kernel: crate::kernels::Kernel,
        storage: crate::kernels::Storage,
        packed: &[u16],
        wide: &[f32],
        base: u32,
        wide_base: u32,
        elems: u64,
    ) -> (Vec<u16>, Vec<f32>) {
        let p = ctx.upload("test packed", packed);
        let w = ctx.upload("test wide", wide);
        let mut encoder = ctx.encoder("test half stage");
        let packed_bytes = (packed.len() as u64 * 2).div_ceil(4) * 4;
        ctx.encode_half_stage(
            &mut encoder,
            kernel,
            storage,
            (&p, (0, packed_bytes), base),
            (&w, None, wide_base),
            elems,
        )
        .expect("records");
        let ps = ctx.stage(&mut encoder, &p, packed_bytes);
        let ws = ctx.stage(&mut encoder, &w, wide.len() as u64 * 4);
        ctx.queue.submit([encoder.finish()]);
        let words: Vec<u32> =
            crate::block_on(ctx.read_back(&ps, packed.len().div_ceil(2))).expect("read");
        let halves: Vec<u16> = bytemuck::cast_slice(&words)[..packed.len()].to_vec();
        let wide = crate::block_on(ctx.read_back(&ws, wide.len())).expect("read");
        (halves, wide)
    }

    /// f32 bit patterns that probe every rounding case of f32 to f16 and
    /// bf16 (ties either way, subnormals, the overflow edge, NaN, zeros),
    /// then seeded random patterns over every exponent.
    fn probe_values() -> Vec<f32> {
        let mut v: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -(1.0 + 2f32.powi(-11) + 2f32.powi(-20)),
            65504.0,
            65519.996,
            65520.0,
            -65520.0,
            1.0e6,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            2f32.powi(-14),
            2f32.powi(-14) * (1.0 - 2f32.powi(-12)),
            2f32.powi(-24),
            2f32.powi(-25),
            -2f32.powi(-25),
            1.5 * 2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            5.0 * 2f32.powi(-25),
            2f32.powi(-25) * (1.0 + 2f32.powi(-20)),
            2f32.powi(-26),
            1.0e-40,
            f32::MIN_POSITIVE,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            3.0e38,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..65536 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(f32::from_bits((state >> 16) as u32));
        }
        v
    }

    /// `half_widen` turns every one of the 65,536 f16 and bf16 patterns into
    /// its exact f32 (NaN stays NaN), and `half_narrow` rounds f32 to the
    /// nearest even f16 and bf16 as the `half` crate does, bit for bit, in
    /// words shared with elements outside the range, which keep their bits.
    #[test]
    fn half_staging_converts_exactly_and_rounds_to_nearest_even() {
        use crate::kernels::{Kernel, Storage};
        let Some(ctx) = gpu() else { return };
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let guard = 0xABCDu16;
        for storage in [Storage::F16, Storage::Bf16] {
            let exact = |h: u16| match storage {
                Storage::F16 => half::f16::from_bits(h).to_f32(),
                _ => half::bf16::from_bits(h).to_f32(),
            };
            let nearest = |x: f32| match storage {
                Storage::F16 => half::f16::from_f32(x).to_bits(),
                _ => half::bf16::from_f32(x).to_bits(),
            };
            // Widen from element 1 on (element 0 shares word 0 with element
            // 1) into f32 elements from 3 on, the 3 before them guards.
            let n = all.len() as u64 - 1;
            let guard_f32 = -1234.5f32;
            let (_, wide) = run_half_stage(
                &ctx,
                Kernel::HalfWiden,
                storage,
                &all,
                &vec![guard_f32; all.len() + 3],
                1,
                3,
                n,
            );
            assert_eq!(
                wide[..3],
                [guard_f32; 3],
                "{storage:?}: wide elements before the range changed"
            );
            for (i, &h) in all.iter().enumerate().skip(1) {
                let (got, want) = (wide[i + 2], exact(h));
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{storage:?} widen index {i} (bits {h:#06x}): actual {got:e}, expected {want:e}"
                );
            }
            // Narrow into elements [1, 1 + len) of words whose other halves are guards.
            let values = probe_values();
            let packed = vec![guard; values.len() + 2];
            // From f32 elements 2 on (the first two are not to be read).
            let wide: Vec<f32> = [f32::NAN, f32::NAN]
                .iter()
                .chain(&values)
                .copied()
                .collect();
            let (halves, _) = run_half_stage(
                &ctx,
                Kernel::HalfNarrow,
                storage,
                &packed,
                &wide,
                1,
                2,
                values.len() as u64,
            );
            assert_eq!(
                halves[0], guard,
                "{storage:?}: element before the range changed"
            );
            assert_eq!(
                halves[values.len() + 1],
                guard,
                "{storage:?}: element after the range changed"
            );
            for (i, &x) in values.iter().enumerate() {
                // NaN included: quiet, with the payload `half` keeps.
                let (got, want) = (halves[i + 1], nearest(x));
                assert!(
                    got == want,
                    "{storage:?} narrow index {i} ({x:e}, bits {:#010x}): actual {got:#06x}, expected {want:#06x}, difference {} steps",
                    x.to_bits(),
                    i32::from(got) - i32::from(want)
                );
            }
        }
    }
}
