//! How row kernels are launched on a device: workgroup size, threads per row
//! and reduction mode, picked per adapter from a small table and per row
//! length when a kernel is recorded.
//!
//! The choice, for a row of `v` vectors (4 columns each where the layout
//! allows `vec4`, else 1):
//!
//! - threads per row `TPR` = the power of two nearest above `v / vectors_per_thread`,
//!   clamped to `1..=max_threads_per_row`. Short rows (small `C`) get few
//!   threads, so one workgroup holds `WG / TPR` rows instead of leaving most
//!   invocations idle; long rows get up to `max_threads_per_row`.
//! - workgroup size `WG` = the larger of `workgroup_size` and `TPR`.
//! - the reduction: subgroup butterflies with no barrier when `TPR` fits in
//!   the adapter's smallest subgroup; subgroup butterflies then one pass
//!   through workgroup memory when `TPR` is a multiple of its largest
//!   subgroup; a workgroup-memory tree otherwise, or when the adapter has no
//!   `SUBGROUP` feature, or when [`RowTuning::subgroups`] is off.
//!
//! `wgpu-loss info` prints the tuning in force and the launch it gives for a
//! few row lengths.

pub use crate::kernels::{Launch, Reduce, HELD_VECTORS, HELD_VECTORS_HALF, WORKGROUP_SIZE};

/// Most vectors one invocation walks in a row loop, whatever the tuning says.
/// lavapipe stops an invocation's loops after 65535 iterations in all (and
/// writes nothing more): a kernel has up to two row loops, so 8192 each
/// leaves ample room. Past that a row gets more invocations.
pub const MAX_VECTORS_PER_THREAD: u64 = 8192;

/// Whether rows of up to `vecs` vectors, on `lanes` lanes that hold `held`
/// vectors each, are read once from registers (`holds_rows()` in
/// `shaders/common.wgsl`). Up to `unheld` of a row's vectors may lie past
/// the registers (`HELD_SLOTS - HOLD`: 1 for gathered and edged rows, whose
/// last vector is then read again on each pass, 0 for whole vec4 rows).
pub(crate) fn rows_held(vecs: u64, unheld: u64, lanes: u64, held: u64) -> bool {
    vecs.saturating_sub(unheld).div_ceil(lanes.max(1)) <= held
}

/// Launch policy for row kernels. Plain data: [`RowTuning::for_adapter`] gives
/// the table's pick; [`crate::ContextOptions::row_tuning`] overrides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowTuning {
    /// Invocations per workgroup (`WG`) when rows are short; a workgroup grows
    /// to hold one row's threads when a row has more. A power of two.
    pub workgroup_size: u32,
    /// Most invocations that share one row: a power of two, at most the
    /// device's `max_compute_invocations_per_workgroup`.
    pub max_threads_per_row: u32,
    /// Vectors of a row each invocation should get before a row is given more
    /// invocations. It also bounds each invocation's serial sum (rounding
    /// error grows with its length) and loop trip count (lavapipe stops an
    /// invocation's loops after 65535 iterations in all).
    pub vectors_per_thread: u32,
    /// Use subgroup reductions where the device has `Features::SUBGROUP`.
    pub subgroups: bool,
    /// Split rows into chunks of about this many vectors, each chunk on its
    /// own threads (a partial pass, then the kernel over each chunk), when a
    /// problem has fewer than `split_rows_below` rows. 0 never splits.
    /// Applies to every row kernel: softmax, log-softmax and logsumexp
    /// forward and backward, and every row loss (cross-entropy with
    /// class-index or probability targets, in place or not, and focal loss).
    pub split_vectors: u32,
    /// Problems with at least this many rows are never split: they fill the
    /// device with whole rows.
    pub split_rows_below: u32,
    /// Workgroups a split aims for, so that few rows of a huge vocabulary
    /// fill the device: rows too long to be held whole ([`HELD_VECTORS`] a
    /// lane) are cut into more (and shorter) chunks than `split_vectors`
    /// gives until rows x chunks reaches this, down to chunks of
    /// `min_split_vectors`. About four per compute unit of a
    /// large GPU (wgpu reports no compute-unit count; 132 on an H100 or
    /// H200, 108 on an A100). 0: chunks from `split_vectors` alone.
    pub occupancy_workgroups: u32,
    /// Fewest vectors a chunk gets when splitting for occupancy: below
    /// this a chunk's merge of the row's records costs more than its
    /// parallelism gains.
    pub min_split_vectors: u32,
    /// Rows that at most this many lanes cover at [`HELD_VECTORS`] vectors
    /// each get those lanes (a power of two) and are held in registers,
    /// read once, whatever `vectors_per_thread` says. 0: only
    /// `vectors_per_thread` decides. The CPU table sets one subgroup, so
    /// short rows are held without a barrier.
    pub held_threads_per_row: u32,
    /// Hold f16 and bf16 rows packed as stored ([`HELD_VECTORS_HALF`]
    /// vectors a lane in the registers of [`HELD_VECTORS`] f32 ones), so rows
    /// of up to 65536 16-bit columns on 1024 lanes are read once; else they
    /// are held as f32, as f32 rows are. On for GPUs; off on CPU adapters,
    /// where lavapipe ran bf16 rows of 128 columns 1.3 to 2x slower packed
    /// (BENCHMARKS.md, "16-bit rows held packed").
    pub hold_half_packed: bool,
    /// Give a kernel that holds two matrices of a row (softmax backward: y
    /// and dy, half of a lane's registers each) the lanes of twice its
    /// vectors, so that rows of up to 16384 f32 columns on 1024 lanes are
    /// read once; else it launches as the other row kernels do, and holds
    /// the rows those lanes fit. On for GPUs; off on CPU adapters, where
    /// lavapipe ran softmax backward at 64 and 128 columns about 1.75x
    /// slower on the doubled lanes (and 4194304x16, held on the same lane,
    /// 1.3x faster; BENCHMARKS.md, "Backward passes held").
    pub hold_pairs: bool,
}

/// Most chunks one row is split into.
pub const MAX_SPLITS: u32 = 1024;

impl Default for RowTuning {
    /// The discrete-GPU row of the table. It asks for 1024 invocations per
    /// row: on a device that allows fewer (WebGPU's default is 256), pass
    /// it through [`RowTuning::fitted_to`] before giving it to
    /// [`crate::ContextOptions::row_tuning`], which checks it as given.
    fn default() -> Self {
        RowTuning {
            workgroup_size: 256,
            max_threads_per_row: 1024,
            vectors_per_thread: 8,
            subgroups: true,
            split_vectors: 4096,
            split_rows_below: 1024,
            occupancy_workgroups: 512,
            min_split_vectors: 256,
            // vectors_per_thread = HELD_VECTORS holds every row that fits.
            held_threads_per_row: 0,
            hold_half_packed: true,
            hold_pairs: true,
        }
    }
}

/// Subgroup sizes of a device, when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubgroupSizes {
    /// Smallest subgroup the device may use.
    pub min: u32,
    /// Largest subgroup the device may use.
    pub max: u32,
}

impl RowTuning {
    /// The table: what to use on an adapter of this type.
    ///
    /// - CPU adapters (lavapipe / llvmpipe, SwiftShader, WARP) run a subgroup
    ///   as one SIMD loop iteration and a barrier as a coroutine switch of
    ///   every subgroup in the workgroup: rows up to 8192 vectors per lane of
    ///   one subgroup (262144 columns) get that one subgroup, so their
    ///   reductions need no barrier; small workgroups keep the scheduler busy
    ///   on every core. 8192 vectors per lane keeps a kernel's two row loops
    ///   well inside lavapipe's 65535-iteration limit. Fewer than 1024 rows
    ///   longer than that are split into chunks of at most 8192 vectors, one
    ///   lane each, and into more (of at least 1024 vectors) until there are
    ///   256 chunks (8 workgroups of 32): lavapipe ran 64 rows of 262144
    ///   classes 1.3x faster split than on 8-lane rows, and one row of a
    ///   million classes 1.7x faster than on one workgroup.
    /// - GPUs: 256-wide workgroups, up to 1024 invocations per row (where the
    ///   device allows: [`RowTuning::fitted_to`]), at least 8 vectors (32
    ///   columns) per invocation before a row gets more, so rows of up to
    ///   32768 columns (vec4) are held in registers and read once (65536 of
    ///   f16 or bf16, held packed: [`RowTuning::hold_half_packed`]); fewer
    ///   than 1024 rows of more than 8192 vectors are split into chunks of
    ///   4096 vectors (16384 columns), so 64 rows of 262144 classes make
    ///   1024 workgroups instead of 64; and into more chunks, of at least 256
    ///   vectors, until there are 512 workgroups (about four per compute
    ///   unit): one row of a million classes makes 512, not 62.
    pub fn for_adapter(device_type: wgpu::DeviceType, subgroups: Option<SubgroupSizes>) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => {
                let sg = subgroups.map_or(8, |s| s.min.max(1));
                RowTuning {
                    workgroup_size: sg * 4,
                    max_threads_per_row: 1024,
                    vectors_per_thread: 8192,
                    subgroups: true,
                    // A row one lane can walk stays whole; longer rows, and
                    // rows too few to give every core work, are cut into
                    // chunks of one lane each (32 to a workgroup of 32).
                    // lavapipe measured 64x262144 1.3x and 1x1M 1.7x faster
                    // split (BENCHMARKS.md, 2026-12-01, fifth session), and
                    // 64x262144 1.07x faster again in chunks of 16384
                    // vectors than 8192 (sixth session): the occupancy rule
                    // already gives every core work.
                    split_vectors: 16384,
                    split_rows_below: 1024,
                    occupancy_workgroups: 256,
                    min_split_vectors: 1024,
                    // Rows of up to 8 vectors a lane of one subgroup (256
                    // columns with 8 lanes) are held: lavapipe ran
                    // cross-entropy at 1048576x128 1.24x faster on 4 lanes
                    // holding 8 vectors than on one lane streaming 32.
                    held_threads_per_row: sg,
                    hold_half_packed: false,
                    hold_pairs: false,
                }
            }
            _ => RowTuning::default(),
        }
    }

    /// `base` with the fields that `WGPU_LOSS_ROW_TUNING` sets, e.g.
    /// `workgroup_size=64,max_threads_per_row=256,vectors_per_thread=32,subgroups=off`.
    /// Unset: `base` unchanged. Unknown keys and bad values are errors that name them.
    pub fn with_env(base: RowTuning) -> crate::Result<RowTuning> {
        match std::env::var("WGPU_LOSS_ROW_TUNING") {
            Ok(spec) => base.with_spec(&spec),
            Err(_) => Ok(base),
        }
    }

    /// `self` with the `key=value` pairs of `spec` (comma separated) applied.
    pub fn with_spec(mut self, spec: &str) -> crate::Result<RowTuning> {
        let bad = |reason: String| crate::Error::InvalidTuning {
            spec: spec.to_string(),
            reason,
        };
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}` is not key=value")))?;
            let number = || {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| bad(format!("{key} = `{value}` is not a whole number")))
            };
            match key.trim() {
                "workgroup_size" => self.workgroup_size = number()?,
                "max_threads_per_row" => self.max_threads_per_row = number()?,
                "vectors_per_thread" => self.vectors_per_thread = number()?,
                "split_vectors" => self.split_vectors = number()?,
                "split_rows_below" => self.split_rows_below = number()?,
                "occupancy_workgroups" => self.occupancy_workgroups = number()?,
                "min_split_vectors" => self.min_split_vectors = number()?,
                "held_threads_per_row" => self.held_threads_per_row = number()?,
                "subgroups" | "hold_half_packed" | "hold_pairs" => {
                    let on = match value.trim() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        v => return Err(bad(format!("{key} = `{v}`: use on or off"))),
                    };
                    match key.trim() {
                        "subgroups" => self.subgroups = on,
                        "hold_half_packed" => self.hold_half_packed = on,
                        _ => self.hold_pairs = on,
                    }
                }
                k => {
                    return Err(bad(format!(
                        "unknown key `{k}` (known: workgroup_size, max_threads_per_row, \
                         vectors_per_thread, subgroups, split_vectors, split_rows_below, \
                         occupancy_workgroups, min_split_vectors, held_threads_per_row, \
                         hold_half_packed, hold_pairs)"
                    )))
                }
            }
        }
        Ok(self)
    }

    /// The table's pick shrunk to what a device allows: workgroup and
    /// threads per row at most the largest power of two within
    /// `max_compute_invocations_per_workgroup` and the workgroup memory (8
    /// bytes per invocation). A CPU-type adapter in a browser (Chromium's
    /// SwiftShader) allows 256 invocations where lavapipe allows 1024.
    pub fn fitted_to(mut self, limits: &wgpu::Limits) -> RowTuning {
        let by_memory = limits.max_compute_workgroup_storage_size / 8;
        let cap = limits
            .max_compute_invocations_per_workgroup
            .min(by_memory)
            .max(1);
        let cap = 1u32 << (31 - cap.leading_zeros()); // largest power of two <= cap
        self.workgroup_size = self.workgroup_size.min(cap);
        self.max_threads_per_row = self.max_threads_per_row.min(cap);
        self
    }

    /// Checks the tuning against the device's limits.
    pub(crate) fn validate(&self, limits: &wgpu::Limits) -> crate::Result<()> {
        let pow2 = |v: u32| v.is_power_of_two();
        let max_invocations = limits.max_compute_invocations_per_workgroup;
        let widest = self.workgroup_size.max(self.max_threads_per_row);
        let checks = [
            (
                pow2(self.workgroup_size) && self.workgroup_size <= max_invocations,
                "row_tuning.workgroup_size",
                self.workgroup_size,
                "must be a power of two within the device's max_compute_invocations_per_workgroup",
            ),
            (
                pow2(self.max_threads_per_row) && self.max_threads_per_row <= max_invocations,
                "row_tuning.max_threads_per_row",
                self.max_threads_per_row,
                "must be a power of two within the device's max_compute_invocations_per_workgroup",
            ),
            (
                widest.saturating_mul(8) <= limits.max_compute_workgroup_storage_size,
                "row_tuning.max_threads_per_row",
                widest,
                "a workgroup needs 8 bytes of workgroup memory per invocation, within max_compute_workgroup_storage_size",
            ),
            (
                self.vectors_per_thread >= 1,
                "row_tuning.vectors_per_thread",
                self.vectors_per_thread,
                "must be at least 1",
            ),
        ];
        for (ok, name, value, reason) in checks {
            if !ok {
                return Err(crate::Error::InvalidOption {
                    name,
                    value: f64::from(value),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// How row kernels hold rows of `storage` read once.
    pub(crate) fn hold(&self, storage: crate::kernels::Storage) -> crate::kernels::Hold {
        if storage.is_half() && self.hold_half_packed {
            crate::kernels::Hold::Packed
        } else {
            crate::kernels::Hold::F32
        }
    }

    /// Vectors a lane holds of a row of `dtype` read once: [`HELD_VECTORS`],
    /// or [`HELD_VECTORS_HALF`] for f16 and bf16 where
    /// [`RowTuning::hold_half_packed`] is on.
    pub fn held_vectors(&self, dtype: crate::DType) -> u64 {
        self.hold(dtype.storage()).vectors()
    }

    /// Chunks each of `rows` rows of `vecs` f32 vectors is split into (1:
    /// whole rows).
    pub fn splits(&self, rows: u64, vecs: u64) -> u32 {
        self.splits_holding(rows, vecs, HELD_VECTORS, 0)
    }

    /// [`RowTuning::splits`] for rows whose lanes hold up to `held` vectors
    /// ([`RowTuning::held_vectors`] of the rows' type), `unheld` of which
    /// may lie past the registers (1 for rows that are not whole vec4s, 0
    /// otherwise: see `rows_held`): rows held whole stay whole.
    pub fn splits_holding(&self, rows: u64, vecs: u64, held: u64, unheld: u64) -> u32 {
        if self.split_vectors == 0 || rows >= u64::from(self.split_rows_below) {
            return 1;
        }
        // Rows held whole (read once) stay whole: a split would read them
        // twice, and their workgroups of up to 1024 lanes fill a device anyway.
        let lanes = vecs
            .div_ceil(u64::from(self.vectors_per_thread.max(1)))
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .min(u64::from(self.max_threads_per_row.max(1)));
        if rows_held(vecs, unheld, lanes, held) {
            return 1;
        }
        let by_size = vecs.div_ceil(u64::from(self.split_vectors));
        // Enough chunks to fill the device, none under min_split_vectors.
        let by_occupancy = u64::from(self.occupancy_workgroups)
            .div_ceil(rows.max(1))
            .min(vecs / u64::from(self.min_split_vectors.max(1)));
        let chunks = by_size.max(by_occupancy);
        // Worth a second pass only when it at least doubles the parallelism.
        if chunks < 2 {
            return 1;
        }
        chunks.min(u64::from(MAX_SPLITS)) as u32
    }

    /// Launch and reduction for rows of `vecs` vectors, on a device that
    /// allows `max_invocations` per workgroup.
    ///
    /// A row always gets enough invocations to keep each under
    /// [`MAX_VECTORS_PER_THREAD`], up to `max_invocations`; the caller checks
    /// that bound ([`Launch::vectors_per_thread`]).
    pub fn plan(
        &self,
        vecs: u64,
        subgroups: Option<SubgroupSizes>,
        max_invocations: u32,
    ) -> (Launch, Reduce) {
        let pow2 = |v: u64| v.max(1).checked_next_power_of_two().unwrap_or(u64::MAX);
        let held = pow2(vecs.div_ceil(HELD_VECTORS));
        let wanted = if held <= u64::from(self.held_threads_per_row) {
            held
        } else {
            pow2(vecs.div_ceil(u64::from(self.vectors_per_thread.max(1))))
        }
        .min(u64::from(self.max_threads_per_row));
        let needed = pow2(vecs.div_ceil(MAX_VECTORS_PER_THREAD));
        // The largest power of two within the device's workgroup size.
        let cap = 1u64 << (31 - max_invocations.max(1).leading_zeros());
        let tpr = wanted.max(needed).min(cap) as u32;
        let launch = Launch {
            workgroup_size: self.workgroup_size.max(tpr),
            threads_per_row: tpr,
        };
        let reduce = match subgroups.filter(|_| self.subgroups) {
            // Subgroups must tile the workgroup for the thread numbering to be dense.
            Some(sg) if launch.workgroup_size.is_multiple_of(sg.max) => {
                if tpr <= sg.min {
                    Reduce::Subgroup
                } else if tpr.is_multiple_of(sg.max) {
                    Reduce::SubgroupThenWorkgroup
                } else {
                    Reduce::Workgroup
                }
            }
            _ => Reduce::Workgroup,
        };
        (launch, reduce)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_fits_the_webgpu_default_limits() {
        let limits = wgpu::Limits::default(); // 256 invocations, 16 KiB of workgroup memory
        for device_type in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            let table = super::RowTuning::for_adapter(device_type, None);
            let fitted = table.fitted_to(&limits);
            fitted
                .validate(&limits)
                .expect("a fitted table pick is valid");
            assert!(fitted.max_threads_per_row <= 256 && fitted.workgroup_size <= 256);
        }
        // Where the device allows the table's pick, fitting changes nothing.
        let lavapipe = wgpu::Limits {
            max_compute_invocations_per_workgroup: 1024,
            max_compute_workgroup_storage_size: 32768,
            ..wgpu::Limits::default()
        };
        let table = super::RowTuning::for_adapter(wgpu::DeviceType::Cpu, None);
        assert_eq!(table.fitted_to(&lavapipe), table);
    }

    use super::*;

    const NVIDIA: Option<SubgroupSizes> = Some(SubgroupSizes { min: 32, max: 32 });
    const INTEL: Option<SubgroupSizes> = Some(SubgroupSizes { min: 8, max: 32 });

    #[test]
    fn short_rows_share_a_workgroup_and_long_rows_get_more_threads() {
        let t = RowTuning::default();
        let (l, r) = t.plan(250, NVIDIA, 1024); // 1000 columns as vec4
        assert_eq!(
            (l.threads_per_row, l.rows_per_workgroup(), r),
            (32, 8, Reduce::Subgroup)
        );
        // 32768 columns: 1024 lanes of 8 vectors, held in registers (issue 17).
        let (l, r) = t.plan(8192, NVIDIA, 1024);
        assert_eq!(
            (l.threads_per_row, r),
            (1024, Reduce::SubgroupThenWorkgroup)
        );
        assert!(
            l.vectors_per_thread(8192) <= 8,
            "held: at most HOLD vectors a lane"
        );
        // Where the device allows 256 invocations, 256.
        let (l, _) = t.plan(8192, NVIDIA, 256);
        assert_eq!(l.threads_per_row, 256);
        let (l, r) = t.plan(1, NVIDIA, 1024);
        assert_eq!(
            (l.threads_per_row, l.rows_per_workgroup(), r),
            (1, 256, Reduce::Subgroup)
        );
    }

    #[test]
    fn long_rows_on_a_cpu_adapter_grow_the_workgroup_and_bound_each_lane() {
        let sg = Some(SubgroupSizes { min: 8, max: 8 });
        let t = RowTuning::for_adapter(wgpu::DeviceType::Cpu, sg);
        // 262144 columns as vec4: 8 lanes, one subgroup, no barrier.
        let (l, r) = t.plan(65_536, sg, 1024);
        assert_eq!(
            (l.threads_per_row, l.workgroup_size, r),
            (8, 32, Reduce::Subgroup)
        );
        // Short rows are held on as few lanes of one subgroup as hold them:
        // 128 columns (32 vectors) on 4 lanes of 8, 256 on all 8; 1000
        // columns (250 vectors) would need 32 lanes and stream on one.
        let (l, r) = t.plan(32, sg, 1024);
        assert_eq!((l.threads_per_row, r), (4, Reduce::Subgroup));
        assert!(l.vectors_per_thread(32) <= HELD_VECTORS);
        assert_eq!(t.plan(64, sg, 1024).0.threads_per_row, 8);
        assert_eq!(t.plan(8, sg, 1024).0.threads_per_row, 1);
        assert_eq!(t.plan(250, sg, 1024).0.threads_per_row, 1);
        let streamed = RowTuning {
            held_threads_per_row: 0,
            ..t
        };
        assert_eq!(streamed.plan(32, sg, 1024).0.threads_per_row, 1);
        let (l, r) = t.plan(300_001, sg, 1024); // scalar columns
        assert_eq!((l.threads_per_row, l.workgroup_size), (64, 64));
        assert_eq!(r, Reduce::SubgroupThenWorkgroup);
        // Two row loops per kernel stay far inside lavapipe's 65535 iterations.
        for vecs in [1, 1000, 300_001, 1 << 22] {
            let (l, _) = t.plan(vecs, sg, 1024);
            assert!(
                vecs.div_ceil(u64::from(l.threads_per_row)) <= 8192,
                "{vecs}"
            );
        }
    }

    #[test]
    fn a_tuning_cannot_give_one_invocation_more_than_the_loop_bound() {
        let narrow = RowTuning {
            max_threads_per_row: 8,
            vectors_per_thread: 1,
            ..RowTuning::default()
        };
        let (l, _) = narrow.plan(300_001, NVIDIA, 1024);
        assert_eq!(l.threads_per_row, 64);
        assert!(l.vectors_per_thread(300_001) <= MAX_VECTORS_PER_THREAD);
        // Past what the device's largest workgroup can cover, the bound is exceeded
        // and the caller must refuse the launch.
        let (l, _) = narrow.plan(1 << 24, NVIDIA, 1024);
        assert_eq!(l.threads_per_row, 1024);
        assert!(l.vectors_per_thread(1 << 24) > MAX_VECTORS_PER_THREAD);
    }

    #[test]
    fn few_rows_of_a_huge_vocabulary_are_split() {
        let gpu = RowTuning::default();
        assert_eq!(gpu.splits(64, 65_536), 16); // 64 x 262144 as vec4
        assert_eq!(gpu.splits(4096, 8192), 1); // many rows fill the device
        assert_eq!(gpu.splits(1, 1 << 30), MAX_SPLITS);
        // Occupancy (issue 17): rows x chunks reach 512 workgroups where the
        // rows are long enough for chunks of 256 vectors.
        assert_eq!(gpu.splits(1, 262_144), 512); // one row of 1M classes: not 64
        assert_eq!(gpu.splits(64, 12_289), 8); // 64 rows past the held length: 512 workgroups
        assert_eq!(gpu.splits(4, 8193), 32); // only 32 chunks of 256 vectors fit

        // Rows held whole (at most 8 vectors on each of 1024 lanes) are read
        // once; neither occupancy nor size splits them (the traffic plan
        // found 8192-vector rows split by size, so read twice).
        assert_eq!(gpu.splits(64, 4096), 1);
        assert_eq!(gpu.splits(64, 8192), 1);
        assert_eq!(gpu.splits(600, 8192), 1);
        let no_occupancy = RowTuning {
            occupancy_workgroups: 0,
            ..gpu
        };
        assert_eq!(no_occupancy.splits(1, 262_144), 64);
        assert_eq!(no_occupancy.splits(64, 4096), 1);
        // CPU adapters: a row one lane walks (8192 vectors) stays whole
        // unless the rows are too few for 256 chunks; longer rows are cut.
        let cpu = RowTuning::for_adapter(wgpu::DeviceType::Cpu, None);
        assert_eq!(cpu.splits(4096, 8192), 1);
        assert_eq!(cpu.splits(512, 8192), 1);
        assert_eq!(cpu.splits(64, 8192), 4); // 64 rows alone: 2 workgroups
        assert_eq!(cpu.splits(64, 65_536), 4); // 64 x 262144 as vec4: 256 chunks
        assert_eq!(cpu.splits(1, 250_000), 244); // one row of 1M classes
        assert_eq!(cpu.splits(2048, 65_536), 1); // many rows fill the cores
    }

    #[test]
    fn held_vectors_is_the_shaders_hold() {
        use crate::kernels::Hold;
        for (hold, text) in [
            (Hold::F32, include_str!("../shaders/prelude/hold_f32.wgsl")),
            (
                Hold::Packed,
                include_str!("../shaders/prelude/hold_packed.wgsl"),
            ),
        ] {
            let held = hold.vectors();
            assert!(
                text.contains(&format!("const HOLD: u32 = {held}u;")),
                "{hold:?}: HOLD must be {held}"
            );
        }
        let gpu = RowTuning::default();
        assert_eq!(gpu.held_vectors(crate::DType::F32), HELD_VECTORS);
        assert_eq!(gpu.held_vectors(crate::DType::BF16), HELD_VECTORS_HALF);
        assert_eq!(gpu.held_vectors(crate::DType::F16), HELD_VECTORS_HALF);
        let cpu = RowTuning::for_adapter(wgpu::DeviceType::Cpu, None);
        assert_eq!(cpu.held_vectors(crate::DType::BF16), HELD_VECTORS);
        // 65536 16-bit columns (16384 vectors) on 1024 lanes stay whole,
        // held; f32 rows that long are split.
        assert_eq!(gpu.splits_holding(64, 16_384, HELD_VECTORS_HALF, 0), 1);
        assert!(gpu.splits_holding(64, 16_384, HELD_VECTORS, 0) > 1);
        // A row that is not whole vec4s may span one vector past the
        // registers (`HELD_SLOTS`): 32766 f32 columns span 8193.
        assert_eq!(gpu.splits_holding(64, 8193, HELD_VECTORS, 1), 1);
        assert!(gpu.splits_holding(64, 8193, HELD_VECTORS, 0) > 1);
        assert!(gpu.splits_holding(64, 8194, HELD_VECTORS, 1) > 1);
    }

    #[test]
    fn falls_back_to_workgroup_memory_where_subgroups_do_not_fit() {
        let t = RowTuning::default();
        // 16 threads: more than Intel's smallest subgroup, not a multiple of its largest.
        assert_eq!(t.plan(128, INTEL, 1024).1, Reduce::Workgroup);
        assert_eq!(t.plan(8192, None, 1024).1, Reduce::Workgroup);
        let off = RowTuning {
            subgroups: false,
            ..t
        };
        assert_eq!(off.plan(250, NVIDIA, 1024).1, Reduce::Workgroup);
    }

    #[test]
    fn a_spec_sets_fields_and_names_what_is_wrong() {
        let t = RowTuning::default()
            .with_spec("workgroup_size=64, subgroups=off")
            .expect("valid spec");
        assert_eq!((t.workgroup_size, t.subgroups), (64, false));
        let t = RowTuning::default()
            .with_spec("hold_pairs=off,hold_half_packed=0")
            .expect("valid spec");
        assert_eq!(
            (t.hold_pairs, t.hold_half_packed, t.subgroups),
            (false, false, true)
        );
        for (spec, needle) in [
            ("hold_pairs=2", "use on or off"),
            ("workgroup_size", "not key=value"),
            ("threads=4", "unknown key `threads`"),
            ("vectors_per_thread=-1", "vectors_per_thread = `-1`"),
            ("subgroups=maybe", "use on or off"),
        ] {
            let err = RowTuning::default()
                .with_spec(spec)
                .expect_err(spec)
                .to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn rejects_tunings_the_device_cannot_run() {
        let limits = wgpu::Limits::default();
        let bad = RowTuning {
            workgroup_size: 384,
            ..RowTuning::default()
        };
        assert!(bad.validate(&limits).is_err());
        let bad = RowTuning {
            max_threads_per_row: 512,
            ..RowTuning::default()
        };
        assert!(
            bad.validate(&limits).is_err(),
            "default limits allow 256 invocations"
        );
        assert!(RowTuning::default()
            .fitted_to(&limits)
            .validate(&limits)
            .is_ok());
    }
}
