//! Host data into tensors.
//!
//! burn resolves a tensor's default dtype from per-device settings keyed by the device alone,
//! so `NdArray<f32>` and `NdArray<f64>` (same CPU device) share whichever default was seen
//! first. Tensors built here always take the backend's own float type.

use burn::tensor::backend::Backend;
use burn::tensor::{Element, Tensor, TensorData};

/// A float tensor of the backend's float element type from host values.
pub fn float_tensor<B: Backend, E: Element, const D: usize>(
    values: Vec<E>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let dtype = <B::FloatElem as Element>::dtype();
    Tensor::from_data(
        TensorData::new(values, shape).convert::<B::FloatElem>(),
        (device, dtype),
    )
}
