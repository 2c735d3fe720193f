//! A model input tensor's values as preprocessing writes them: CHW, batch 1, in the model's precision.
//! (The inference crate owns the storage, which may be memory ONNX Runtime allocated.)

use half::f16;

/// The values of a model input tensor.
pub enum TensorData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// The values of a model input tensor, writable.
pub enum TensorMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
}
