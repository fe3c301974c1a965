//! Host data into tensors.
//!
//! burn resolves a tensor's default dtype from per-device settings keyed by the device alone,
//! so `NdArray<f32>` and `NdArray<f64>` (same CPU device) share whichever default was seen
//! first. Tensors built here always take the backend's own float type.

use burn::tensor::backend::Backend;
use burn::tensor::{Element, Tensor, TensorData};

use crate::error::{Error, Result};

/// A tensor's values on the host as `f32`, row-major (one read-back); `what` names it in the
/// error a failed read-back gives.
///
/// # Errors
/// [`Error::Shape`] when the backend cannot read the tensor back.
pub fn host_values<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    what: &'static str,
) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::shape(what, format!("{e:?}")))
}

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
