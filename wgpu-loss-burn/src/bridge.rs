//! Between burn's tensors and this crate's views: unwrapping the dispatch,
//! autodiff and fusion layers down to CubeCL tensors, reaching the wgpu
//! buffers beneath them, running one of the crate's `encode_*` calls on
//! them, and wrapping the outputs back up.
//!
//! Ordering on the shared queue:
//! 1. resolving a fusion tensor runs the fused graph that produces it;
//! 2. `get_resource` records CubeCL's queued work for those buffers into its
//!    encoder, and `flush` submits it;
//! 3. this crate's encoder is submitted after that, on the same queue;
//! 4. burn's later work is submitted after ours.
//!
//! wgpu runs one queue's submissions in order, so burn's writes land before
//! our kernels read, and burn's later reads see what our kernels wrote.

use std::sync::Arc;

use burn::backend::{BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
use burn::tensor::{DType, Shape};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_fusion::stream::StreamId;
use burn_fusion::{get_client, FusionTensor, NoOp};
use burn_ir::{BackendIr, InitOperationIr, OperationIr};
use cubecl::wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use wgpu_loss::{GpuContext, GpuTensor};

use crate::device::context_for;
use crate::Error;

/// A float or int tensor of burn's wgpu backend, below fusion:
/// what every op here reads and writes.
pub(crate) type Fused = FusionTensor<FusionCubeRuntime>;

/// A float tensor of burn's autodiff layer over the wgpu backend.
pub(crate) type Tracked =
    burn::backend::tensor::FloatTensor<burn::backend::Autodiff<burn::backend::Cube>>;

/// A burn tensor taken apart: its fusion-level primitive, and the autodiff
/// tensor around it when it is tracked.
pub(crate) enum Unwrapped {
    Plain(Fused),
    Tracked(Tracked),
}

/// Takes a float tensor apart. `name` is the argument, for errors.
pub(crate) fn unwrap_float(
    tensor: DispatchTensor,
    name: &'static str,
) -> Result<(Unwrapped, DispatchAutodiffContext), Error> {
    let context = tensor.autodiff;
    let kind = match tensor.kind {
        DispatchTensorKind::Autodiff(inner) => *inner,
        kind => kind,
    };
    match kind {
        DispatchTensorKind::Cube(BackendTensor::Float(t)) => Ok((Unwrapped::Plain(t), context)),
        DispatchTensorKind::Cube(BackendTensor::Autodiff(t)) => {
            Ok((Unwrapped::Tracked(t), context))
        }
        other => Err(Error::NotWgpu {
            tensor: name,
            found: kind_name(&other),
        }),
    }
}

/// Takes an int tensor apart (targets never carry gradients).
pub(crate) fn unwrap_int(tensor: DispatchTensor, name: &'static str) -> Result<Fused, Error> {
    let kind = match tensor.kind {
        DispatchTensorKind::Autodiff(inner) => *inner,
        kind => kind,
    };
    match kind {
        DispatchTensorKind::Cube(BackendTensor::Int(t)) => Ok(t),
        other => Err(Error::NotWgpu {
            tensor: name,
            found: kind_name(&other),
        }),
    }
}

fn kind_name(kind: &DispatchTensorKind) -> String {
    match kind {
        DispatchTensorKind::Cube(t) => format!("the cubecl backend ({} tensor)", t.name()),
        #[allow(unreachable_patterns)]
        _ => "a backend other than burn's wgpu backend".to_string(),
    }
}

/// Wraps a fusion-level float primitive back into an untracked dispatch tensor.
pub(crate) fn wrap_plain(tensor: Fused) -> DispatchTensor {
    DispatchTensor {
        kind: DispatchTensorKind::Cube(BackendTensor::Float(tensor)),
        autodiff: DispatchAutodiffContext::Disabled,
    }
}

/// Wraps an autodiff float tensor back into a dispatch tensor.
pub(crate) fn wrap_tracked(tensor: Tracked, context: DispatchAutodiffContext) -> DispatchTensor {
    DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Cube(
            BackendTensor::Autodiff(tensor),
        ))),
        autodiff: context,
    }
}

/// Runs the fused graph that produces `tensor` and returns the CubeCL tensor.
pub(crate) fn resolve_float(tensor: Fused) -> CubeTensor {
    let client = tensor.client.clone();
    client.resolve_tensor_float::<CubeBackend>(tensor)
}

pub(crate) fn resolve_int(tensor: Fused) -> CubeTensor {
    let client = tensor.client.clone();
    client.resolve_tensor_int::<CubeBackend>(tensor)
}

/// Registers a CubeCL tensor with fusion, as burn does for a tensor made from data.
pub(crate) fn fuse(tensor: CubeTensor) -> Result<Fused, Error> {
    let client = get_client::<CubeBackend>(&tensor.device);
    let shape = tensor.meta.shape().clone();
    let dtype = tensor.dtype;
    let handle = <CubeBackend as BackendIr>::float_tensor_handle(tensor);
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    client
        .register(
            StreamId::current(),
            OperationIr::Init(desc),
            NoOp::<CubeBackend>::new(),
        )
        .into_iter()
        .next()
        .ok_or_else(|| Error::Burn("fusion registered no tensor for an output".into()))
}

/// A CubeCL tensor pinned for one call: its wgpu buffer, offset and size.
pub(crate) struct Bound {
    pub tensor: CubeTensor,
    buffer: wgpu::Buffer,
    offset: u64,
    /// CubeCL's pin on the allocation (it is neither freed nor moved while
    /// held), kept without naming its type.
    _pin: Box<dyn std::any::Any>,
}

impl Bound {
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The element types the crate's views take.
fn view_dtype(dtype: DType, name: &'static str) -> Result<wgpu_loss::DType, Error> {
    match dtype {
        DType::F32 => Ok(wgpu_loss::DType::F32),
        DType::F16 => Ok(wgpu_loss::DType::F16),
        DType::BF16 => Ok(wgpu_loss::DType::BF16),
        DType::I32 => Ok(wgpu_loss::DType::I32),
        other => Err(Error::DType {
            tensor: name,
            found: format!("{other:?}"),
        }),
    }
}

/// One call's worth of CubeCL tensors on one shared device.
pub(crate) struct Launch {
    pub context: Arc<GpuContext>,
    pub device: burn_cubecl::CubeDevice,
    bound: Vec<Bound>,
    names: Vec<&'static str>,
    /// Inputs at unaligned offsets, copied to aligned allocations.
    copies: Vec<PendingCopy>,
}

struct PendingCopy {
    source: Bound,
    destination: usize,
    bytes: u64,
}

impl Launch {
    /// The context shared with burn's device of `tensor`.
    pub fn on(tensor: &CubeTensor, name: &'static str) -> Result<Self, Error> {
        let context = context_for(&tensor.device).ok_or_else(|| Error::UnsharedDevice {
            tensor: name,
            device: format!("{:?}", tensor.device),
        })?;
        Ok(Self {
            context,
            device: tensor.device.clone(),
            bound: Vec::new(),
            names: Vec::new(),
            copies: Vec::new(),
        })
    }

    /// Pins an input: made contiguous (a strided view is copied once, on the
    /// device, by burn's own kernel) and copied to a fresh allocation where
    /// its offset is not aligned for a binding. Returns its index.
    pub fn input(&mut self, tensor: CubeTensor, name: &'static str) -> Result<usize, Error> {
        if tensor.device != self.device {
            return Err(Error::DeviceMismatch {
                tensor: name,
                expected: format!("{:?}", self.device),
                found: format!("{:?}", tensor.device),
            });
        }
        view_dtype(tensor.dtype, name)?;
        let tensor = burn_cubecl::kernel::into_contiguous(tensor);
        let bound = self.pin(tensor, name)?;
        let align = u64::from(
            self.context
                .device()
                .limits()
                .min_storage_buffer_offset_alignment,
        );
        if bound.offset() % align == 0 {
            self.bound.push(bound);
            self.names.push(name);
            return Ok(self.bound.len() - 1);
        }
        // CubeCL keeps its own offsets aligned (its kernels bind them too),
        // so this is a view made some other way. Buffer copies move it to a
        // fresh, aligned allocation, first thing in this call's encoder.
        let bytes = (bound.tensor.meta.shape().num_elements() * bound.tensor.dtype.size()) as u64;
        if bound.offset() % wgpu::COPY_BUFFER_ALIGNMENT != 0
            || !bytes.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        {
            return Err(Error::Unsupported(format!(
                "`{name}` starts at byte {} of its buffer ({bytes} bytes): not a multiple of 4, \
                 so neither a binding nor a buffer copy can reach it",
                bound.offset()
            )));
        }
        let shape = bound.tensor.meta.shape().clone();
        let index = self.output(shape, bound.tensor.dtype, name)?;
        self.copies.push(PendingCopy {
            source: bound,
            destination: index,
            bytes,
        });
        Ok(index)
    }

    /// Allocates an output in burn's memory pool (contiguous, aligned) and pins it.
    pub fn output(
        &mut self,
        shape: Shape,
        dtype: DType,
        name: &'static str,
    ) -> Result<usize, Error> {
        let client = self.device.client();
        let bytes = shape.num_elements() * dtype.size();
        // A zero-byte binding is not allowed; an empty output still gets 4 bytes.
        let handle = client.empty(bytes.max(4));
        let tensor = CubeTensor::new_contiguous(client, self.device.clone(), shape, handle, dtype);
        let bound = self.pin(tensor, name)?;
        self.bound.push(bound);
        self.names.push(name);
        Ok(self.bound.len() - 1)
    }

    fn pin(&self, tensor: CubeTensor, name: &'static str) -> Result<Bound, Error> {
        let resource = tensor
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
            .map_err(|e| Error::NotWgpu {
                tensor: name,
                found: format!("a CubeCL runtime whose buffers are not wgpu buffers ({e:?})"),
            })?;
        let WgpuResource { buffer, offset, .. } = resource.resource();
        Ok(Bound {
            buffer: buffer.clone(),
            offset: *offset,
            tensor,
            _pin: Box::new(resource),
        })
    }

    /// The element count of pinned tensor `index`.
    pub fn elements(&self, index: usize) -> usize {
        self.bound[index].tensor.meta.shape().num_elements()
    }

    /// A view of pinned tensor `index` as `[rows, cols]`.
    pub fn view(&self, index: usize, rows: usize, cols: usize) -> Result<GpuTensor<'_>, Error> {
        let bound = &self.bound[index];
        let dtype = view_dtype(bound.tensor.dtype, self.names[index])?;
        Ok(GpuTensor {
            buffer: bound.buffer(),
            offset: bound.offset(),
            rows,
            cols,
            dtype,
        })
    }

    /// Records with `record` into a fresh encoder and submits it after
    /// everything burn has queued; returns the pinned tensors.
    pub fn run<T>(
        self,
        record: impl FnOnce(&Self, &mut wgpu::CommandEncoder) -> Result<T, Error>,
    ) -> Result<(T, Vec<CubeTensor>), Error> {
        // Burn's queued work for these buffers was recorded by `get_resource`;
        // submit it (and anything else queued) before ours.
        self.device
            .client()
            .flush()
            .map_err(|e| Error::Burn(format!("flushing burn's queued work: {e:?}")))?;
        let mut encoder =
            self.context
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgpu-loss-burn"),
                });
        for copy in &self.copies {
            // CubeCL suballocates both from its pages, and a buffer copy
            // cannot stay inside one buffer: through a buffer of our own.
            let staging = self
                .context
                .device()
                .create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-loss-burn realignment"),
                    size: copy.bytes,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
            let destination = &self.bound[copy.destination];
            encoder.copy_buffer_to_buffer(
                copy.source.buffer(),
                copy.source.offset(),
                &staging,
                0,
                copy.bytes,
            );
            encoder.copy_buffer_to_buffer(
                &staging,
                0,
                destination.buffer(),
                destination.offset(),
                copy.bytes,
            );
        }
        let value = record(&self, &mut encoder)?;
        self.context.queue().submit([encoder.finish()]);
        let tensors = self.bound.into_iter().map(|b| b.tensor).collect();
        Ok((value, tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedDevice;
    use burn::tensor::Tensor;

    /// burn's own slices come back from fusion as fresh allocations, so an
    /// unaligned offset is built here by hand: a view from element 1.
    #[test]
    fn an_unaligned_offset_is_copied_to_an_aligned_allocation() {
        let shared = match SharedDevice::from_burn() {
            Ok(shared) => shared,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("CI=true but burn found no wgpu adapter: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED (no wgpu adapter for burn: {e})");
                return;
            }
        };
        let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let tensor = Tensor::<1>::from_floats(values.as_slice(), shared.device());
        let Ok((Unwrapped::Plain(fused), _)) = unwrap_float(tensor.into_dispatch(), "t") else {
            panic!("a plain wgpu tensor");
        };
        let whole = resolve_float(fused);
        let handle = whole.handle.clone().offset_start(4);
        let view = CubeTensor::new_contiguous(
            whole.client.clone(),
            whole.device.clone(),
            Shape::new([63]),
            handle,
            DType::F32,
        );
        let mut launch = Launch::on(&view, "view").expect("shared device");
        let index = launch.input(view, "view").expect("pinned");
        let align = u64::from(
            shared
                .context()
                .device()
                .limits()
                .min_storage_buffer_offset_alignment,
        );
        let offset = launch.view(index, 63, 1).expect("view").offset;
        assert_eq!(offset % align, 0, "offset {offset}, alignment {align}");
        let ((), tensors) = launch.run(|_, _| Ok(())).expect("run");
        let copied =
            Tensor::<1>::from_dispatch(wrap_plain(fuse(tensors[index].clone()).expect("fused")));
        let data = copied
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(data, values[1..].to_vec());
        drop(whole);
    }
}
