//! KServe v2 / Open Inference Protocol JSON: requests in, responses out.
//!
//! Parse, don't validate: a request document becomes typed [`Tensor`]s here, once, with every
//! number checked against its declared datatype. What the tensors mean is checked later against
//! the signed manifest.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_wire::DType;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, element_count};

/// A KServe v2 inference request.
#[derive(Clone, Debug, Deserialize)]
pub struct InferRequest {
    /// Optional request id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// The input tensors.
    pub inputs: Vec<RequestTensor>,
    /// Requested outputs (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor of a request, as sent.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestTensor {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// KServe datatype name.
    pub datatype: String,
    /// Row-major values, flat or nested.
    pub data: Value,
}

/// An output asked for by name.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestedOutput {
    /// Name.
    pub name: String,
}

/// A KServe v2 inference response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// The request's id, if it had one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// Output tensors.
    pub outputs: Vec<ResponseTensor>,
}

/// One output tensor of a response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResponseTensor {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// KServe datatype name.
    pub datatype: String,
    /// Flat row-major values.
    pub data: Vec<Value>,
}

impl InferRequest {
    /// Parses a request document.
    pub fn from_json(bytes: &[u8]) -> Result<InferRequest> {
        serde_json::from_slice(bytes).map_err(|e| Error::Request(e.to_string()))
    }

    /// Turns the inputs into typed tensors.
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        self.inputs.iter().map(RequestTensor::to_tensor).collect()
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

impl RequestTensor {
    /// Decodes the values, checking each against the datatype and the count against the shape.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let bad = |msg: String| Error::Request(format!("input {:?}: {msg}", self.name));
        let dtype = DType::from_kserve_name(&self.datatype)
            .ok_or_else(|| bad(format!("unsupported datatype {:?}", self.datatype)))?;
        let count = element_count(&self.shape).ok_or_else(|| bad("shape overflows".into()))?;
        let mut values = Vec::new();
        flatten(&self.data, &mut values);
        if values.len() != count {
            return Err(bad(format!(
                "{} values for shape {:?} ({count} elements)",
                values.len(),
                self.shape
            )));
        }
        let mut data = Vec::with_capacity(count * dtype.size());
        for (i, v) in values.into_iter().enumerate() {
            let at = |what: &str| bad(format!("value {i} ({v}) is not {what}"));
            match dtype {
                DType::Bool => data.push(u8::from(v.as_bool().ok_or_else(|| at("a bool"))?)),
                DType::F32 => {
                    let f = v.as_f64().ok_or_else(|| at("a number"))?;
                    data.extend_from_slice(&(f as f32).to_le_bytes());
                }
                DType::F64 => {
                    data.extend_from_slice(&v.as_f64().ok_or_else(|| at("a number"))?.to_le_bytes())
                }
                DType::U64 => {
                    data.extend_from_slice(&v.as_u64().ok_or_else(|| at("a UINT64"))?.to_le_bytes())
                }
                DType::I64 => {
                    data.extend_from_slice(&v.as_i64().ok_or_else(|| at("an INT64"))?.to_le_bytes())
                }
                int => {
                    let n = v.as_i64().ok_or_else(|| at("an integer"))?;
                    let in_range = |lo: i64, hi: i64| {
                        (lo..=hi).contains(&n).then_some(n).ok_or_else(|| at(int.kserve_name()))
                    };
                    match int {
                        DType::U8 => data.push(in_range(0, u8::MAX.into())? as u8),
                        DType::I8 => data.push(in_range(i8::MIN.into(), i8::MAX.into())? as i8 as u8),
                        DType::U16 => {
                            data.extend_from_slice(&(in_range(0, u16::MAX.into())? as u16).to_le_bytes())
                        }
                        DType::I16 => data.extend_from_slice(
                            &(in_range(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes(),
                        ),
                        DType::U32 => {
                            data.extend_from_slice(&(in_range(0, u32::MAX.into())? as u32).to_le_bytes())
                        }
                        _ => data.extend_from_slice(
                            &(in_range(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes(),
                        ),
                    }
                }
            }
        }
        Ok(Tensor { name: self.name.clone(), dtype, shape: self.shape.clone(), data })
    }
}

impl ResponseTensor {
    /// Renders a tensor as JSON values (non-finite floats become `null`, as JSON has no NaN).
    pub fn from_tensor(t: &Tensor) -> ResponseTensor {
        let n = t.element_count().unwrap_or(0);
        let data = (0..n)
            .map(|i| match t.dtype {
                DType::Bool => Value::Bool(t.data.get(i).is_some_and(|b| *b != 0)),
                DType::F32 | DType::F64 => t.value_f64(i).map_or(Value::Null, |f| {
                    // Shortest decimal that reads back as the same f32 (0.01, not 0.009999999776482582).
                    let f =
                        if t.dtype == DType::F32 { (f as f32).to_string().parse().unwrap_or(f) } else { f };
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }),
                DType::I64 => t.to_i64_at(i).map_or(Value::Null, Value::from),
                DType::U64 => t.to_u64_at(i).map_or(Value::Null, Value::from),
                _ => t.value_f64(i).map_or(Value::Null, |f| Value::from(f as i64)),
            })
            .collect();
        ResponseTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            datatype: t.dtype.kserve_name().into(),
            data,
        }
    }
}

impl Tensor {
    fn to_i64_at(&self, i: usize) -> Option<i64> {
        Some(i64::from_le_bytes(self.data.get(i * 8..i * 8 + 8)?.try_into().ok()?))
    }

    fn to_u64_at(&self, i: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.data.get(i * 8..i * 8 + 8)?.try_into().ok()?))
    }
}
