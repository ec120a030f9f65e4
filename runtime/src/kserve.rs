//! KServe v2 / Open Inference Protocol JSON: requests in, responses out, including Triton's
//! binary tensor data extension (what `tritonclient` sends by default).
//!
//! Parse, don't validate: a request document becomes typed [`Tensor`]s here, once, with every
//! number checked against its declared datatype. What the tensors mean is checked later against
//! the signed manifest.
//!
//! Binary tensor data: the body is a JSON header of `Inference-Header-Content-Length` bytes
//! followed by the raw little-endian data of every input whose `parameters.binary_data_size` is
//! set, in input order. Outputs asked for with `parameters.binary_data` (or every output, with the
//! request's `parameters.binary_data_output`) are answered the same way.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_wire::DType;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, element_count};

/// The HTTP header that carries the length of the JSON part of a binary-data body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

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
    /// Request parameters; `binary_data_output` is the one Warden reads.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
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
    /// Row-major values, flat or nested (absent when the tensor is sent as binary data).
    #[serde(default)]
    pub data: Option<Value>,
    /// Tensor parameters; `binary_data_size` is the one Warden reads.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// The tensor's raw bytes, when it came as binary data.
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

/// An output asked for by name.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestedOutput {
    /// Name.
    pub name: String,
    /// Output parameters; `binary_data` is the one Warden reads.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

fn flag(params: Option<&serde_json::Map<String, Value>>, key: &str) -> Result<bool> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::Request(format!("parameter {key} must be true or false, not {other}"))),
    }
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
    /// Flat row-major values (absent when the tensor follows as binary data).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<Vec<Value>>,
    /// `{"binary_data_size": N}` when the tensor follows as binary data.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parameters: Option<Value>,
}

impl InferRequest {
    /// Parses a request document.
    pub fn from_json(bytes: &[u8]) -> Result<InferRequest> {
        serde_json::from_slice(bytes).map_err(|e| Error::Request(e.to_string()))
    }

    /// Parses a request body: plain JSON when `header_len` is `None`, otherwise a JSON header of
    /// `header_len` bytes followed by the binary data of the inputs that declare
    /// `binary_data_size`, in order.
    pub fn from_body(body: &[u8], header_len: Option<usize>) -> Result<InferRequest> {
        let request = InferRequest::from_binary_body(body, header_len)?;
        request.check_parameters()?;
        Ok(request)
    }

    fn from_binary_body(body: &[u8], header_len: Option<usize>) -> Result<InferRequest> {
        let Some(n) = header_len else { return InferRequest::from_json(body) };
        let (header, mut rest) = body.split_at_checked(n).ok_or_else(|| {
            Error::Request(format!("{HEADER_LENGTH} is {n} but the body has {} bytes", body.len()))
        })?;
        let mut request = InferRequest::from_json(header)?;
        for input in &mut request.inputs {
            let Some(size) = input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) else {
                continue;
            };
            let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                Error::Request(format!("input {:?}: binary_data_size is not a size", input.name))
            })?;
            let (bytes, tail) = rest.split_at_checked(size).ok_or_else(|| {
                Error::Request(format!(
                    "input {:?}: binary_data_size {size} but only {} bytes follow",
                    input.name,
                    rest.len()
                ))
            })?;
            if input.data.is_some() {
                return Err(Error::Request(format!(
                    "input {:?}: both data and binary_data_size; send one",
                    input.name
                )));
            }
            input.raw = Some(bytes.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(Error::Request(format!("{} bytes of binary data belong to no input", rest.len())));
        }
        Ok(request)
    }

    /// Whether output `name` is to be answered as binary data.
    pub fn wants_binary(&self, name: &str) -> bool {
        match self.outputs.as_ref().and_then(|o| o.iter().find(|o| o.name == name)) {
            Some(o) if o.parameters.as_ref().is_some_and(|p| p.contains_key("binary_data")) => {
                flag(o.parameters.as_ref(), "binary_data").unwrap_or(false)
            }
            _ => flag(self.parameters.as_ref(), "binary_data_output").unwrap_or(false),
        }
    }

    /// Refuses binary-data flags that are not booleans ([`from_body`](Self::from_body) checks it).
    pub fn check_parameters(&self) -> Result<()> {
        flag(self.parameters.as_ref(), "binary_data_output")?;
        for o in self.outputs.iter().flatten() {
            flag(o.parameters.as_ref(), "binary_data")?;
        }
        Ok(())
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
        if let Some(raw) = &self.raw {
            let expected = count.checked_mul(dtype.size()).ok_or_else(|| bad("shape overflows".into()))?;
            if raw.len() != expected {
                return Err(bad(format!(
                    "{} bytes of binary data for shape {:?} of {} ({expected} bytes)",
                    raw.len(),
                    self.shape,
                    self.datatype
                )));
            }
            if dtype == DType::Bool && raw.iter().any(|b| *b > 1) {
                return Err(bad("a BOOL byte is neither 0 nor 1".into()));
            }
            return Ok(Tensor {
                name: self.name.clone(),
                dtype,
                shape: self.shape.clone(),
                data: raw.clone(),
            });
        }
        let data = self.data.as_ref().ok_or_else(|| bad("no data and no binary_data_size".into()))?;
        let mut values = Vec::new();
        flatten(data, &mut values);
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
            data: Some(data),
            parameters: None,
        }
    }

    /// Describes a tensor whose bytes follow the JSON header as binary data.
    pub fn binary(t: &Tensor) -> ResponseTensor {
        ResponseTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            datatype: t.dtype.kserve_name().into(),
            data: None,
            parameters: Some(serde_json::json!({ "binary_data_size": t.data.len() })),
        }
    }
}

/// An encoded response body: JSON, or a JSON header of `header_len` bytes followed by binary
/// tensor data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseBody {
    /// The exact bytes to send.
    pub bytes: Vec<u8>,
    /// `Some(n)`: the first `n` bytes are JSON (send `Inference-Header-Content-Length: n`).
    pub header_len: Option<usize>,
}

impl InferResponse {
    /// Builds the response for `outputs`, each as JSON values or, where `binary` says so, as
    /// binary data, and encodes it.
    pub fn encode(
        model_name: String,
        model_version: String,
        id: Option<String>,
        outputs: &[Tensor],
        binary: impl Fn(&str) -> bool,
    ) -> ResponseBody {
        let mut tail = Vec::new();
        let tensors = outputs
            .iter()
            .map(|t| {
                if binary(&t.name) {
                    tail.extend_from_slice(&t.data);
                    ResponseTensor::binary(t)
                } else {
                    ResponseTensor::from_tensor(t)
                }
            })
            .collect();
        let response = InferResponse { model_name, model_version, id, outputs: tensors };
        let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
        if tail.is_empty() {
            return ResponseBody { bytes, header_len: None };
        }
        let header_len = bytes.len();
        bytes.extend_from_slice(&tail);
        ResponseBody { bytes, header_len: Some(header_len) }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn body(header: &Value, tail: &[u8]) -> (Vec<u8>, usize) {
        let mut bytes = header.to_string().into_bytes();
        let n = bytes.len();
        bytes.extend_from_slice(tail);
        (bytes, n)
    }

    #[test]
    fn binary_inputs_are_taken_in_order_and_sizes_must_agree() {
        let header = serde_json::json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1], "datatype": "INT64", "data": [7]},
            {"name": "c", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}},
        ]});
        let mut tail: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        tail.extend_from_slice(&(-3i64).to_le_bytes());
        let (bytes, n) = body(&header, &tail);
        let tensors = InferRequest::from_body(&bytes, Some(n)).unwrap().tensors().unwrap();
        assert_eq!(tensors[0].to_f32().unwrap(), [1.5, -2.0]);
        assert_eq!(tensors[1].to_i64().unwrap(), [7]);
        assert_eq!(tensors[2].to_i64().unwrap(), [-3]);

        let (short, n) = body(&header, &tail[..12]);
        assert!(
            matches!(InferRequest::from_body(&short, Some(n)), Err(Error::Request(m)) if m.contains("only"))
        );
        let mut long = tail.clone();
        long.push(0);
        let (long, n) = body(&header, &long);
        assert!(
            matches!(InferRequest::from_body(&long, Some(n)), Err(Error::Request(m)) if m.contains("belong to no input"))
        );
        assert!(InferRequest::from_body(&bytes, Some(bytes.len() + 1)).is_err());

        let wrong = serde_json::json!({"inputs": [
            {"name": "a", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]});
        let (bytes, n) = body(&wrong, &tail[..8]);
        let err = InferRequest::from_body(&bytes, Some(n)).unwrap().tensors().unwrap_err();
        assert!(err.to_string().contains("12 bytes"), "{err}");

        let both = serde_json::json!({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
            "data": [0.0, 0.0], "parameters": {"binary_data_size": 8}}]});
        let (bytes, n) = body(&both, &tail[..8]);
        assert!(
            matches!(InferRequest::from_body(&bytes, Some(n)), Err(Error::Request(m)) if m.contains("both"))
        );
        let odd: InferRequest = serde_json::from_value(
            serde_json::json!({"inputs": [], "parameters": {"binary_data_output": "yes"}}),
        )
        .unwrap();
        assert!(odd.check_parameters().is_err());
    }

    #[test]
    fn binary_outputs_follow_the_json_header() {
        let outputs = [Tensor::from_f32("p", &[2], &[0.25, 0.75]), Tensor::from_i64("l", &[1], &[1])];
        let request: InferRequest = serde_json::from_value(serde_json::json!({
            "inputs": [], "outputs": [{"name": "p", "parameters": {"binary_data": true}}, {"name": "l"}]
        }))
        .unwrap();
        let body = InferResponse::encode("m".into(), "1".into(), None, &outputs, |n| request.wants_binary(n));
        let n = body.header_len.unwrap();
        let head: Value = serde_json::from_slice(&body.bytes[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(head["outputs"][0].get("data").is_none());
        assert_eq!(head["outputs"][1]["data"], serde_json::json!([1]));
        assert_eq!(&body.bytes[n..], &outputs[0].data[..]);
        let all: InferRequest = serde_json::from_value(
            serde_json::json!({"inputs": [], "parameters": {"binary_data_output": true}}),
        )
        .unwrap();
        assert!(all.wants_binary("l"));
        let json = InferResponse::encode("m".into(), "1".into(), None, &outputs, |_| false);
        assert_eq!(json.header_len, None);
    }
}
