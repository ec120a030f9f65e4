use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use warden_wire::DType;
use warden_wire::guest::{
    DeclaredTensor, Dim, Dims, GuestError, GuestErrorKind, InputFact, LoadRequest, MAX_ERROR_MESSAGE,
    ModelInfo, RunRequest, TensorParts, TensorRef,
};

/// A parsed, analysed and optimized model, ready to run repeatedly.
#[derive(Debug)]
pub struct Engine {
    state: TypedSimpleState,
    inputs: Vec<(String, DType)>,
    outputs: Vec<String>,
}

/// An output tensor, owned by the engine's caller.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    /// Output name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

fn error(kind: GuestErrorKind, e: impl std::fmt::Debug) -> GuestError {
    let mut message = format!("{e:?}");
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    GuestError { kind, message }
}

/// Parses ONNX bytes. Node names are only labels, but tract requires them unique while some
/// exporters (OpenVINO's) repeat them; duplicates get a `#n` suffix first.
/// Refuses tensor dimensions that are negative or do not fit this target's `usize`: tract would
/// truncate them (a tensor declared `[2^32 + 1]` loads as one element in the 32-bit guest).
fn check_dims(graph: &tract_onnx::pb::GraphProto) -> TractResult<()> {
    fn tensor(t: &tract_onnx::pb::TensorProto) -> TractResult<()> {
        if let Some(d) = t.dims.iter().find(|d| usize::try_from(**d).is_err()) {
            return Err(TractError::msg(format!(
                "tensor {:?}: dimension {d} is negative or too large",
                t.name
            )));
        }
        Ok(())
    }
    for t in &graph.initializer {
        tensor(t)?;
    }
    for node in &graph.node {
        for a in &node.attribute {
            for t in a.t.iter().chain(&a.tensors) {
                tensor(t)?;
            }
            for g in a.g.iter().chain(&a.graphs) {
                check_dims(g)?;
            }
        }
    }
    Ok(())
}

fn parse(bytes: &[u8], onnx: &tract_onnx::Onnx) -> TractResult<InferenceModel> {
    let mut proto = onnx.proto_model_for_read(&mut &*bytes)?;
    if let Some(graph) = proto.graph.as_ref() {
        check_dims(graph)?;
    }
    if let Some(graph) = proto.graph.as_mut() {
        let mut seen = std::collections::HashSet::new();
        for (ix, node) in graph.node.iter_mut().enumerate() {
            if !node.name.is_empty() && !seen.insert(node.name.clone()) {
                node.name = format!("{}#{ix}", node.name);
            }
        }
    }
    onnx.model_for_proto_model(&proto)
}

fn datum_type(dtype: DType) -> DatumType {
    match dtype {
        DType::Bool => DatumType::Bool,
        DType::U8 => DatumType::U8,
        DType::I8 => DatumType::I8,
        DType::U16 => DatumType::U16,
        DType::I16 => DatumType::I16,
        DType::U32 => DatumType::U32,
        DType::I32 => DatumType::I32,
        DType::U64 => DatumType::U64,
        DType::I64 => DatumType::I64,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
    }
}

fn dtype(dt: DatumType) -> Option<DType> {
    DType::ALL.into_iter().find(|d| datum_type(*d) == dt.unquantized())
}

/// Parses a model (without optimizing it) and reports its declared inputs and outputs.
pub fn inspect(model: &[u8]) -> Result<ModelInfo, GuestError> {
    let model_err = |e| error(GuestErrorKind::Model, e);
    let model = parse(model, &tract_onnx::onnx().with_ignore_output_shapes(false)).map_err(model_err)?;
    let describe = |outlets: &[OutletId], named_by_node: bool| -> Result<Vec<DeclaredTensor>, GuestError> {
        outlets
            .iter()
            .map(|o| {
                let fact = model.outlet_fact(*o).map_err(model_err)?;
                let name = if named_by_node {
                    model.node(o.node).name.clone()
                } else {
                    model
                        .outlet_label(*o)
                        .map(str::to_owned)
                        .unwrap_or_else(|| model.node(o.node).name.clone())
                };
                let shape = (!fact.shape.is_open()).then(|| {
                    fact.shape
                        .dims()
                        .map(|d| match d.concretize() {
                            Some(TDim::Val(n)) if n >= 0 => Some(Dim::Fixed(n as u64)),
                            Some(TDim::Sym(s)) => Some(Dim::Symbol(format!("{s}"))),
                            _ => None,
                        })
                        .collect()
                });
                Ok(DeclaredTensor { name, dtype: fact.datum_type.concretize().and_then(dtype), shape })
            })
            .collect()
    };
    Ok(ModelInfo {
        inputs: describe(model.input_outlets().map_err(model_err)?, true)?,
        outputs: describe(model.output_outlets().map_err(model_err)?, false)?,
    })
}

impl Engine {
    /// Parses the ONNX bytes, pins the inputs to the manifest's facts, and optimizes the model.
    pub fn load(request: &LoadRequest<'_>) -> Result<Engine, GuestError> {
        let model_err = |e| error(GuestErrorKind::Model, e);
        let mut model = parse(request.model, &tract_onnx::onnx()).map_err(model_err)?;
        let graph_inputs: Vec<String> = model
            .input_outlets()
            .map_err(model_err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        if graph_inputs.len() != request.inputs.len() {
            return Err(error(
                GuestErrorKind::Model,
                format!(
                    "the graph has {} inputs {graph_inputs:?}, the manifest declares {}",
                    graph_inputs.len(),
                    request.inputs.len()
                ),
            ));
        }
        let mut inputs = Vec::with_capacity(graph_inputs.len());
        for (ix, name) in graph_inputs.iter().enumerate() {
            let fact: &InputFact = request.inputs.iter().find(|f| &f.name == name).ok_or_else(|| {
                error(GuestErrorKind::Model, format!("graph input {name:?} is not in the manifest"))
            })?;
            let shape: TVec<TDim> = fact
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => TDim::Val(*n as i64),
                    Dim::Symbol(s) => model.symbols.sym(s).to_dim(),
                })
                .collect();
            model
                .set_input_fact(ix, InferenceFact::dt_shape(datum_type(fact.dtype), shape))
                .map_err(model_err)?;
            inputs.push((name.clone(), fact.dtype));
        }
        let outputs = model
            .output_outlets()
            .map_err(model_err)?
            .iter()
            .map(|o| {
                model.outlet_label(*o).map(str::to_owned).unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let model = model.into_optimized().map_err(model_err)?;
        // In the sandbox only: native tract stays tract's own, for the benchmarks to compare.
        #[cfg(target_arch = "wasm32")]
        let model = {
            let model = crate::label::swapped_in(model);
            let model = crate::maxpool::swapped_in(model);
            let model = crate::rowbin::swapped_in(model);
            let model = crate::reducesum::swapped_in(model);
            let model = crate::hardswish::swapped_in(model);
            let model = crate::pad::swapped_in(model);
            let model = crate::im2col::swapped_in(model);
            let model = crate::eager::swapped_in(model);
            // Before `pack`, which would swap the vector's pack for its own.
            let model = crate::gemv::swapped_in(model);
            crate::pack::swapped_in(model)
        };
        let plan = model.into_runnable().map_err(model_err)?;
        let state = plan.spawn().map_err(model_err)?;
        Ok(Engine { state, inputs, outputs })
    }

    /// Runs the model once; inputs are matched to graph inputs by name. The outputs borrow the
    /// engine until they are dropped.
    pub fn run_borrowed(&mut self, request: &RunRequest<'_>) -> Result<Outputs<'_>, GuestError> {
        let input_err = |e| error(GuestErrorKind::Input, e);
        if request.inputs.len() != self.inputs.len() {
            return Err(input_err(format!(
                "expected {} inputs, got {}",
                self.inputs.len(),
                request.inputs.len()
            )));
        }
        let mut values = TVec::with_capacity(self.inputs.len());
        for (name, dtype) in &self.inputs {
            let t = request
                .inputs
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| input_err(format!("missing input {name:?}")))?;
            if t.dtype != *dtype {
                return Err(input_err(format!("input {name:?} is {}, expected {dtype}", t.dtype)));
            }
            values.push(tensor_from_ref(t).map_err(input_err)?.into_tvalue());
        }
        let outputs = self.state.run(values).map_err(|e| error(GuestErrorKind::Run, e))?;
        let values = outputs
            .into_iter()
            .zip(&self.outputs)
            .map(|(t, name)| {
                let t = if t.datum_type() == DatumType::TDim {
                    t.cast_to_dt(DatumType::I64)
                        .map_err(|e| error(GuestErrorKind::Output, e))?
                        .into_owned()
                        .into_tvalue()
                } else {
                    t
                };
                let dtype = dtype(t.datum_type()).ok_or_else(|| {
                    error(
                        GuestErrorKind::Output,
                        format!("output {name:?} has type {:?}, which Warden cannot carry", t.datum_type()),
                    )
                })?;
                Ok((dtype, t))
            })
            .collect::<Result<_, GuestError>>()?;
        Ok(Outputs { names: &self.outputs, values })
    }

    /// Runs the model once, like [`Engine::run_borrowed`], and copies the outputs out.
    pub fn run(&mut self, request: &RunRequest<'_>) -> Result<Vec<OwnedTensor>, GuestError> {
        Ok(self
            .run_borrowed(request)?
            .tensors()
            .map(|t| OwnedTensor {
                name: t.name.to_owned(),
                dtype: t.dtype,
                shape: t.shape,
                data: t.data.to_vec(),
            })
            .collect())
    }
}

/// One run's outputs, as tract produced them, in the engine's output order.
#[derive(Debug)]
pub struct Outputs<'e> {
    names: &'e [String],
    values: TVec<(DType, TValue)>,
}

/// The outputs as a successful run's reply: encoded byte for byte as
/// `Reply::Ok(RunResponse { outputs: self.tensors().collect() })` (a test compares the bytes),
/// without collecting the tensors or their shapes first.
impl serde::Serialize for Outputs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        struct All<'a>(&'a Outputs<'a>);
        impl serde::Serialize for All<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let Outputs { names, values } = self.0;
                serializer.collect_seq(names.iter().zip(values).map(|(name, (dtype, t))| TensorParts {
                    name,
                    dtype: *dtype,
                    shape: Dims(t.shape()),
                    data: t.as_bytes(),
                }))
            }
        }
        struct Response<'a>(&'a Outputs<'a>);
        impl serde::Serialize for Response<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut s = serializer.serialize_struct("RunResponse", 1)?;
                s.serialize_field("outputs", &All(self.0))?;
                s.end()
            }
        }
        serializer.serialize_newtype_variant("Result", 0, "Ok", &Response(self))
    }
}

impl Outputs<'_> {
    /// The outputs in contract form, borrowing their names and bytes (no copy).
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.names.iter().zip(&self.values).map(|(name, (dtype, t))| TensorRef {
            name,
            dtype: *dtype,
            shape: t.shape().iter().map(|d| *d as u64).collect(),
            data: t.as_bytes(),
        })
    }
}

fn tensor_from_ref(t: &TensorRef<'_>) -> Result<Tensor, String> {
    let shape: Vec<usize> = t.shape.iter().map(|d| *d as usize).collect();
    let len = shape.iter().try_fold(t.dtype.size(), |acc, d| acc.checked_mul(*d)).ok_or("shape overflows")?;
    if len != t.data.len() {
        return Err(format!("input {:?} has {} bytes, its shape needs {len}", t.name, t.data.len()));
    }
    if t.dtype == DType::Bool && t.data.iter().any(|b| *b > 1) {
        return Err(format!("input {:?} has a bool that is neither 0 nor 1", t.name));
    }
    let mut tensor = Tensor::zero_dt(datum_type(t.dtype), &shape).map_err(|e| e.to_string())?;
    tensor.as_bytes_mut().copy_from_slice(t.data);
    Ok(tensor)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use warden_wire::guest::{Dim, InputFact, Reply, RunResponse};

    use super::*;

    /// A run's outputs encode as the contract's reply to the byte: the dtypes model (seven
    /// outputs, one per dtype), with a named first dimension at several sizes.
    #[test]
    fn outputs_encode_as_a_run_reply() {
        let model =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/dtypes/dtypes.onnx"))
                .unwrap();
        let types = [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8, DType::I8, DType::Bool];
        let inputs = types
            .iter()
            .map(|t| InputFact {
                name: format!("in_{t}"),
                dtype: *t,
                shape: vec![Dim::Symbol("n".into()), Dim::Fixed(3)],
            })
            .collect();
        let mut engine = Engine::load(&LoadRequest { model: &model, inputs }).unwrap();
        for rows in [0u64, 1, 5] {
            let data: Vec<Vec<u8>> = types.iter().map(|t| vec![1; t.size() * 3 * rows as usize]).collect();
            let names: Vec<String> = types.iter().map(|t| format!("in_{t}")).collect();
            let request = RunRequest {
                inputs: types
                    .iter()
                    .zip(&data)
                    .zip(&names)
                    .map(|((t, d), n)| TensorRef { name: n, dtype: *t, shape: vec![rows, 3], data: d })
                    .collect(),
            };
            let outputs = engine.run_borrowed(&request).unwrap();
            let reference: Reply<RunResponse<'_>> = Ok(RunResponse { outputs: outputs.tensors().collect() });
            assert_eq!(reference.as_ref().unwrap().outputs.len(), 7);
            assert_eq!(
                postcard::to_allocvec(&outputs).unwrap(),
                postcard::to_allocvec(&reference).unwrap(),
                "{rows} rows"
            );
        }
    }
}
