//! The library behind the `wgpu-loss` command: everything the command needs
//! that an embedder of `wgpu-loss` should not compile.
//!
//! - [`problem`]: any op or loss by name, on the GPU, the fast CPU path or
//!   the f64 reference (what `eval`, `check` and `bench` run);
//! - [`cpu_linear`]: the fused linear + cross-entropy on the CPU (sgemm + [`cpu_fast`]);
//! - [`cpu_fast`]: the multi-threaded f32 CPU path, `bench`'s opponent and
//!   `eval --device cpu`;
//! - [`mod@bench`]: resident-buffer timing, timestamps, the copy yardstick;
//! - [`bench_linear`]: the fused linear + cross-entropy against the crate's matrix product;
//! - [`io`]: `.npy` and `.safetensors` files;
//! - [`gpu`]: the command's blocking helpers around a `GpuContext`;
//! - [`stream`]: windows of rows under a memory budget, read, computed and written in overlap.
#![deny(missing_docs)]

pub mod bench;
pub mod bench_linear;
pub mod cpu_fast;
pub mod cpu_linear;
pub mod error;
pub mod gpu;
pub mod io;
pub mod problem;
pub mod stream;

pub use error::{Error, Result};
