//! The traffic plan: every dispatch an encode call records, with its kernel,
//! its workgroups and the bytes it moves.
//!
//! The plan is not a model run beside the code: each place that records a
//! dispatch (`encode_windows`, `encode_grid` and the matrix product in
//! `src/ops/`) notes what it just recorded, from the views it bound and the
//! launch it chose. The bytes of a row kernel's matrices are the bound
//! windows times how often the kernel's loops read each element
//! ([`crate::kernels::Kernel`]'s `matrix_reads`, which mirrors the shaders:
//! rows held in registers are read once, streamed rows twice); per-row
//! arrays count their bytes per row. Caches are not modelled: the class
//! weights count once per dispatch, and the matrix product counts its
//! operands once.

use std::sync::Mutex;

/// One dispatch of a plan ([`crate::GpuContext::record_plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The kernel's WGSL entry point.
    pub kernel: &'static str,
    /// Workgroups launched.
    pub workgroups: u64,
    /// The most items (matrix elements, rows or records) one workgroup walks:
    /// what a dispatch of one workgroup costs, since nothing shares its work.
    pub items_per_workgroup: u64,
    /// Bytes read from memory, a re-read counted each time.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes one load of the dispatch's matrix operands moves: 16 for four
    /// f32 (whole vec4 rows, or edged ones), 8 for four 16-bit values, the
    /// element's own size (or the `u32` word a bf16 sits in) where rows are
    /// gathered or scalar; 0 where the dispatch loads no matrix (blocked
    /// reductions and their folds, exports).
    pub load_bytes: u64,
}

/// What a dispatch moves, as the code that records it knows it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Traffic {
    pub items_per_workgroup: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub load_bytes: u64,
}

/// The dispatches noted while each [`crate::GpuContext::record_plan`] runs:
/// one list per recording in progress, so that recordings on threads that
/// share a context, or nested ones, each get every dispatch of their span.
#[derive(Debug, Default)]
pub(crate) struct PlanRecorder(Mutex<Recordings>);

#[derive(Debug, Default)]
struct Recordings {
    next_id: u64,
    open: Vec<(u64, Vec<Dispatch>)>,
}

impl PlanRecorder {
    pub(crate) fn note(&self, kernel: &'static str, workgroups: u64, traffic: Traffic) {
        if let Ok(mut rec) = self.0.lock() {
            for (_, plan) in rec.open.iter_mut() {
                plan.push(Dispatch {
                    kernel,
                    workgroups,
                    items_per_workgroup: traffic.items_per_workgroup,
                    bytes_read: traffic.bytes_read,
                    bytes_written: traffic.bytes_written,
                    load_bytes: traffic.load_bytes,
                });
            }
        }
    }

    /// Opens a recording; it closes when [`Recording::take`] returns its
    /// dispatches, or when it drops (a recording closure that panicked).
    pub(crate) fn start(&self) -> Recording<'_> {
        let id = match self.0.lock() {
            Ok(mut rec) => {
                let id = rec.next_id;
                rec.next_id += 1;
                rec.open.push((id, Vec::new()));
                id
            }
            Err(_) => u64::MAX,
        };
        Recording { recorder: self, id }
    }

    fn close(&self, id: u64) -> Vec<Dispatch> {
        let Ok(mut rec) = self.0.lock() else {
            return Vec::new();
        };
        match rec.open.iter().position(|(i, _)| *i == id) {
            Some(at) => rec.open.swap_remove(at).1,
            None => Vec::new(),
        }
    }
}

/// One open recording of a [`PlanRecorder`].
pub(crate) struct Recording<'a> {
    recorder: &'a PlanRecorder,
    id: u64,
}

impl Recording<'_> {
    /// Closes the recording and returns its dispatches.
    pub(crate) fn take(self) -> Vec<Dispatch> {
        self.recorder.close(self.id)
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        // After `take` this finds nothing to close.
        self.recorder.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::{PlanRecorder, Traffic};

    fn open_count(r: &PlanRecorder) -> usize {
        r.0.lock().map(|rec| rec.open.len()).unwrap_or(usize::MAX)
    }

    /// A recording whose closure panics closes anyway, so it does not go on
    /// collecting every later dispatch; nested recordings each get theirs.
    #[test]
    fn recordings_close_when_taken_or_dropped() {
        let r = PlanRecorder::default();
        let outer = r.start();
        r.note("a", 1, Traffic::default());
        let inner = r.start();
        r.note("b", 1, Traffic::default());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _dropped = r.start();
            panic!("a recording closure panics");
        }));
        assert!(caught.is_err());
        assert_eq!(open_count(&r), 2, "the panicked recording is still open");
        let kernels = |v: Vec<super::Dispatch>| v.iter().map(|d| d.kernel).collect::<Vec<_>>();
        assert_eq!(kernels(inner.take()), ["b"]);
        assert_eq!(kernels(outer.take()), ["a", "b"]);
        assert_eq!(open_count(&r), 0);
    }
}
