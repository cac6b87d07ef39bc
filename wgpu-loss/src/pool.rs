//! A buffer pool for the host API: uploads, outputs, scratch and readback
//! buffers are taken from per-(size class, usage) free lists and returned
//! when a call is done, so a loop of calls of one shape allocates nothing
//! after the first, and the crate can say how many buffers it holds. Also
//! the uniform buffers of the kernels, shared by content.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Idle buffers kept per (size class, usage); beyond that, returned buffers are destroyed.
const IDLE_PER_CLASS: usize = 4;
/// ... for classes of at most [`SMALL_CLASS`] bytes: a call's small scratch
/// (records, partial sums, unused outputs) shares a few classes, and two
/// encoders in flight at once held more than four of one, so a loop of
/// them kept destroying and creating one.
const IDLE_PER_SMALL_CLASS: usize = 32;
const SMALL_CLASS: u64 = 64 << 10;
/// Idle bytes kept in all; beyond that, returned buffers are destroyed.
const IDLE_BYTES_CAP: u64 = 1 << 30;

/// What the pool holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers the crate allocated that still exist (in use or idle).
    pub live_buffers: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Of those, buffers idle in the pool.
    pub idle_buffers: u64,
    /// Buffers created since the context was made (a measure of churn).
    pub created_buffers: u64,
}

/// Size class: powers of two up to 64 MiB, then multiples of 16 MiB, so one
/// shape always maps to the same class and a class wastes at most half.
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    if bytes <= 64 << 20 {
        bytes.next_power_of_two()
    } else {
        bytes.div_ceil(16 << 20) * (16 << 20)
    }
}

#[derive(Default)]
pub(crate) struct BufferPool {
    /// Lent buffers may sit in a caller's encoder not yet submitted (the
    /// encode path's scratch): evict them by dropping, which wgpu defers
    /// until no command uses them, never by destroying.
    lent_to_encoders: bool,
    idle: Mutex<HashMap<(u64, wgpu::BufferUsages), Vec<wgpu::Buffer>>>,
    idle_bytes: AtomicU64,
    idle_buffers: AtomicU64,
    live_buffers: AtomicU64,
    live_bytes: AtomicU64,
    created: AtomicU64,
}

impl BufferPool {
    /// The encode path's pool (see the field `lent_to_encoders`).
    pub(crate) fn lent_to_encoders() -> Self {
        BufferPool {
            lent_to_encoders: true,
            ..Default::default()
        }
    }

    /// A buffer of at least `bytes` bytes with exactly `usage`.
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        label: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_size: u64,
    ) -> PooledBuffer<'_> {
        PooledBuffer {
            buffer: self.take_buffer(device, label, bytes, usage, max_size),
            pool: self,
        }
    }

    /// [`BufferPool::take`]'s buffer, which the caller gives back.
    fn take_buffer(
        &self,
        device: &wgpu::Device,
        label: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_size: u64,
    ) -> wgpu::Buffer {
        // Whole 4-byte words, and never past the device's buffer size limit.
        let size = size_class(bytes)
            .min(max_size / 4 * 4)
            .max(bytes.div_ceil(4) * 4);
        let reused = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.get_mut(&(size, usage)).and_then(Vec::pop));
        match reused {
            Some(b) => {
                self.idle_bytes.fetch_sub(size, Ordering::Relaxed);
                self.idle_buffers.fetch_sub(1, Ordering::Relaxed);
                b
            }
            None => {
                self.live_buffers.fetch_add(1, Ordering::Relaxed);
                self.live_bytes.fetch_add(size, Ordering::Relaxed);
                self.created.fetch_add(1, Ordering::Relaxed);
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            }
        }
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        if self.idle_bytes.load(Ordering::Relaxed) + size <= IDLE_BYTES_CAP {
            if let Ok(mut idle) = self.idle.lock() {
                let list = idle.entry((size, buffer.usage())).or_default();
                let keep = if size <= SMALL_CLASS {
                    IDLE_PER_SMALL_CLASS
                } else {
                    IDLE_PER_CLASS
                };
                if list.len() < keep {
                    list.push(buffer);
                    self.idle_bytes.fetch_add(size, Ordering::Relaxed);
                    self.idle_buffers.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.live_buffers.fetch_sub(1, Ordering::Relaxed);
        self.live_bytes.fetch_sub(size, Ordering::Relaxed);
        if !self.lent_to_encoders {
            buffer.destroy();
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            live_buffers: self.live_buffers.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            idle_buffers: self.idle_buffers.load(Ordering::Relaxed),
            created_buffers: self.created.load(Ordering::Relaxed),
        }
    }
}

/// A buffer on loan from the pool; it goes back when dropped. Host calls
/// finish their GPU work before returning, and later writes are queue-ordered
/// after earlier submissions, so reuse never races the device.
pub struct PooledBuffer<'a> {
    buffer: wgpu::Buffer,
    pool: &'a BufferPool,
}

impl Deref for PooledBuffer<'_> {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        // `wgpu::Buffer` is a shared handle: the pool keeps a clone of it.
        self.pool.give_back(self.buffer.clone());
    }
}

/// A scratch buffer of the encode path: on loan from the context's encode
/// pool (it goes back when dropped, at the end of the `encode_*` call), or a
/// constant buffer shared by content, which nothing writes.
///
/// Reuse is safe without waiting for the device because every pooled
/// scratch buffer is written by a call's own passes before they read it, and
/// the passes of one call are contiguous in one command buffer: whichever
/// order callers submit their encoders in, one call's passes never run
/// between another's write and read. Nothing queue-writes pooled scratch
/// except the test poison, which lands before a submission's passes.
pub(crate) struct Scratch {
    buffer: wgpu::Buffer,
    pool: Option<Arc<BufferPool>>,
}

impl Scratch {
    pub(crate) fn take(
        pool: &Arc<BufferPool>,
        device: &wgpu::Device,
        label: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_size: u64,
    ) -> Scratch {
        Scratch {
            buffer: pool.take_buffer(device, label, bytes, usage, max_size),
            pool: Some(Arc::clone(pool)),
        }
    }

    /// A buffer that is never returned to a pool (constants, placeholders).
    pub(crate) fn shared(buffer: wgpu::Buffer) -> Scratch {
        Scratch { buffer, pool: None }
    }
}

impl Deref for Scratch {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(self.buffer.clone());
        }
    }
}

/// Most uniform buffers a context keeps: a training loop uses a few dozen
/// parameter sets; past this the cache starts over (buffers in flight stay
/// alive through wgpu's own references).
const UNIFORM_CACHE_ENTRIES: usize = 4096;

/// Buffers the recording of kernels created
/// ([`crate::GpuContext::encode_buffers_created`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeBuffers {
    /// Uniform buffers (one per distinct parameter set seen).
    pub uniforms: u64,
    /// Scratch buffers created (row results, records, workspaces): taken
    /// from a pool after the first calls of a shape, and constants shared
    /// by content, so a loop of calls of one shape stops creating them.
    pub scratch: u64,
    /// Bind groups: one per dispatch an `encode_*` call records, none when
    /// a [`crate::Prepared`] encodes them again.
    pub bind_groups: u64,
}

/// Uniform buffers by their bytes, and the counts behind [`EncodeBuffers`].
#[derive(Default)]
pub(crate) struct UniformCache {
    buffers: Mutex<HashMap<Vec<u8>, wgpu::Buffer>>,
    uniforms: AtomicU64,
    scratch: AtomicU64,
    bind_groups: AtomicU64,
}

impl UniformCache {
    pub(crate) fn get_or_make(
        &self,
        key: Vec<u8>,
        make: impl FnOnce(&[u8]) -> wgpu::Buffer,
    ) -> wgpu::Buffer {
        let mut map = match self.buffers.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(buffer) = map.get(&key) {
            return buffer.clone();
        }
        if map.len() >= UNIFORM_CACHE_ENTRIES {
            map.clear();
        }
        let buffer = make(&key);
        self.uniforms.fetch_add(1, Ordering::Relaxed);
        map.insert(key, buffer.clone());
        buffer
    }

    pub(crate) fn count_scratch(&self) {
        self.scratch.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_bind_group(&self) {
        self.bind_groups.fetch_add(1, Ordering::Relaxed);
    }

    /// Uniforms made, and scratch made outside the encode pool (`pooled`:
    /// the encode pool's creations).
    pub(crate) fn counts(&self, pooled: u64) -> EncodeBuffers {
        EncodeBuffers {
            uniforms: self.uniforms.load(Ordering::Relaxed),
            scratch: self.scratch.load(Ordering::Relaxed) + pooled,
            bind_groups: self.bind_groups.load(Ordering::Relaxed),
        }
    }
}
