use warden_wire::DType;
use warden_wire::guest::{RunRequest, TensorRef};

/// A host-side tensor: dtype, row-major shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Input or output name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// `product(shape) * dtype.size()` little-endian bytes.
    pub data: Vec<u8>,
}

macro_rules! typed {
    ($from:ident, $to:ident, $t:ty, $dtype:expr) => {
        /// Builds a tensor from values of this element type.
        pub fn $from(name: impl Into<String>, shape: &[u64], values: &[$t]) -> Tensor {
            Tensor {
                name: name.into(),
                dtype: $dtype,
                shape: shape.to_vec(),
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }

        /// The values, if the tensor has this element type.
        pub fn $to(&self) -> Option<Vec<$t>> {
            (self.dtype == $dtype).then(|| {
                self.data
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect()
            })
        }
    };
}

impl Tensor {
    /// This tensor in the guest contract's form, borrowing its name and bytes.
    pub fn as_tensor_ref(&self) -> TensorRef<'_> {
        TensorRef { name: &self.name, dtype: self.dtype, shape: self.shape.clone(), data: &self.data }
    }

    /// A contract run request over `inputs`: what `warden_guest::Engine::run` takes when tract
    /// runs natively on the same inputs (benchmarks, reference tests).
    pub fn run_request(inputs: &[Tensor]) -> RunRequest<'_> {
        RunRequest { inputs: inputs.iter().map(Tensor::as_tensor_ref).collect() }
    }

    typed!(from_f32, to_f32, f32, DType::F32);
    typed!(from_f64, to_f64, f64, DType::F64);
    typed!(from_i64, to_i64, i64, DType::I64);
    typed!(from_i32, to_i32, i32, DType::I32);
    typed!(from_u8, to_u8, u8, DType::U8);
    typed!(from_i8, to_i8, i8, DType::I8);

    /// Builds a bool tensor.
    pub fn from_bool(name: impl Into<String>, shape: &[u64], values: &[bool]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: DType::Bool,
            shape: shape.to_vec(),
            data: values.iter().map(|b| u8::from(*b)).collect(),
        }
    }

    /// Number of elements the shape holds (`None` if it overflows).
    pub fn element_count(&self) -> Option<usize> {
        element_count(&self.shape)
    }

    /// Element `i` as an `f64` (lossless for every dtype but 64-bit integers past 2^53).
    pub fn value_f64(&self, i: usize) -> Option<f64> {
        let size = self.dtype.size();
        let b = self.data.get(i * size..(i + 1) * size)?;
        Some(match self.dtype {
            DType::Bool | DType::U8 => f64::from(b[0]),
            DType::I8 => f64::from(b[0] as i8),
            DType::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            DType::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            DType::U32 => f64::from(u32::from_le_bytes(b.try_into().ok()?)),
            DType::I32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
            DType::U64 => u64::from_le_bytes(b.try_into().ok()?) as f64,
            DType::I64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
            DType::F64 => f64::from_le_bytes(b.try_into().ok()?),
        })
    }
}

/// Elements in a shape, `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?))
}
