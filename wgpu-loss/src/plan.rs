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
}

/// What a dispatch moves, as the code that records it knows it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Traffic {
    pub items_per_workgroup: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// The dispatches noted while a [`crate::GpuContext::record_plan`] runs.
#[derive(Debug, Default)]
pub(crate) struct PlanRecorder(Mutex<Option<Vec<Dispatch>>>);

impl PlanRecorder {
    pub(crate) fn note(&self, kernel: &'static str, workgroups: u64, traffic: Traffic) {
        if let Ok(mut slot) = self.0.lock() {
            if let Some(plan) = slot.as_mut() {
                plan.push(Dispatch {
                    kernel,
                    workgroups,
                    items_per_workgroup: traffic.items_per_workgroup,
                    bytes_read: traffic.bytes_read,
                    bytes_written: traffic.bytes_written,
                });
            }
        }
    }

    pub(crate) fn start(&self) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Vec::new());
        }
    }

    pub(crate) fn take(&self) -> Vec<Dispatch> {
        self.0
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or_default()
    }
}
