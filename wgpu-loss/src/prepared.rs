//! Dispatches recorded once and encoded again on every step, creating
//! nothing: [`crate::GpuContext::prepare`] and [`Prepared`].
//!
//! Every place that records a dispatch goes through one helper
//! (`GpuContext::run_dispatch` in `src/ops/mod.rs`), which creates the bind
//! group and, when it records into the encoder of an open `prepare`, keeps
//! the pipeline, the bind group and the workgroup counts. Replaying them is
//! exact because an encode call's work is its dispatches and nothing else:
//! uniforms and constants are written once, when they are made, and are
//! never written again; scratch is written by the dispatches that read it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// One recorded dispatch.
#[derive(Clone, Debug)]
struct Pass {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The dispatches of one or more `encode_*` calls, recorded once by
/// [`crate::GpuContext::prepare`] and encoded into any command encoder as
/// often as wanted, with no bind group, uniform or scratch buffer created:
/// a training loop's steady state allocates nothing.
///
/// A `Prepared` binds the same byte ranges of the same buffers on every
/// replay, so it computes on whatever those buffers hold when the encoder
/// is submitted: write the next batch into the logits' buffer and encode
/// again. Shapes, options and views are fixed when it is prepared; for
/// others, prepare again.
///
/// It holds its bind groups, and through them the buffers they bind (the
/// caller's, and the crate's uniforms and scratch) until it is dropped.
/// Pooled scratch may also serve other calls in between: every op writes
/// its scratch before reading it, and the queue runs dispatches in order.
#[derive(Clone, Debug)]
pub struct Prepared {
    passes: Vec<Pass>,
}

impl Prepared {
    /// Records every dispatch into `encoder`, one compute pass each, in the
    /// order the prepared calls recorded them.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        for p in &self.passes {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(p.label),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &p.bind_group, &[]);
            pass.dispatch_workgroups(p.groups.0, p.groups.1, 1);
        }
    }

    /// The kernels (WGSL entry points) it dispatches, in order.
    pub fn kernels(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.label).collect()
    }
}

/// The captures in progress, each keyed by the address of the encoder its
/// `prepare` lent to the closure: a capture takes only the dispatches
/// recorded into that encoder, not those other threads record meanwhile,
/// nor those of a host API call (which records into encoders of its own).
/// While a capture is open its encoder lives in `prepare`'s frame, so no
/// other live encoder has its address.
#[derive(Debug, Default)]
pub(crate) struct Captures {
    /// How many are open: recording skips the lock when none is.
    open: AtomicUsize,
    lists: Mutex<Vec<(usize, Vec<Pass>)>>,
}

fn address(encoder: &wgpu::CommandEncoder) -> usize {
    std::ptr::from_ref(encoder) as usize
}

impl Captures {
    /// Keeps a dispatch recorded into `encoder`, if a capture is open on it.
    pub(crate) fn note(
        &self,
        encoder: &wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: (u32, u32),
    ) {
        if self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let at = address(encoder);
        let mut lists = match self.lists.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, passes)) = lists.iter_mut().find(|(a, _)| *a == at) {
            passes.push(Pass {
                label,
                pipeline: pipeline.clone(),
                bind_group: bind_group.clone(),
                groups,
            });
        }
    }

    /// Opens a capture of what is recorded into `encoder`; it closes when
    /// the guard drops (a panicking recording leaves nothing open).
    pub(crate) fn open(&self, encoder: &wgpu::CommandEncoder) -> CaptureGuard<'_> {
        let at = address(encoder);
        let mut lists = match self.lists.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        lists.push((at, Vec::new()));
        self.open.fetch_add(1, Ordering::AcqRel);
        CaptureGuard { captures: self, at }
    }
}

/// An open capture ([`Captures::open`]).
pub(crate) struct CaptureGuard<'a> {
    captures: &'a Captures,
    /// Its encoder's address.
    at: usize,
}

impl CaptureGuard<'_> {
    /// Closes the capture and returns what it kept.
    pub(crate) fn finish(self) -> Prepared {
        let passes = self.close();
        std::mem::forget(self);
        Prepared { passes }
    }

    fn close(&self) -> Vec<Pass> {
        let mut lists = match self.captures.lists.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.captures.open.fetch_sub(1, Ordering::AcqRel);
        match lists.iter().position(|(a, _)| *a == self.at) {
            Some(at) => lists.remove(at).1,
            None => Vec::new(),
        }
    }
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        self.close();
    }
}
