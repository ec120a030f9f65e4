//! The generated hostile-model corpus (`tests/hostile/make_hostile.py`): structural attacks on the
//! parser, analyser and optimizer, and rebuilt replays of published tract crash inputs. Each ends
//! as a typed error within its deadline (or, for the replays that are valid models, as a correct
//! run), and the same runtime then still serves a good model. The runtime is set up as
//! `warden serve`'s (guest calls on fibers), and each model that loads is run both from an async
//! task and from a blocking call.

use warden::{Error, GuestErrorKind, SandboxError, Tensor};

use super::hostile::{Harness, LOAD_TIMEOUT, RUN_TIMEOUT, SLACK, timed};

/// How one attack ended.
#[derive(Debug)]
enum Outcome {
    LoadRefused(Error),
    RunRefused(Error),
    Ran(Vec<Tensor>),
}

/// Signs `file` with a manifest `x: f32 input -> y: f32 output`, loads it, and if it loads runs it
/// (x = 0.5 everywhere) from a blocking call and from an async task, which must end alike. Each
/// step must end within its deadline (plus slack for a loaded machine); then the runtime must
/// still serve the digits model.
fn attack(h: &Harness, file: &str, input: &[u64], output: &[u64]) -> Outcome {
    let (loaded, took) = timed(|| h.load_hostile(file, input, output));
    assert!(took < LOAD_TIMEOUT + SLACK, "{file}: the load ended only after {took:?}");
    let outcome = match loaded {
        Err(e) => Outcome::LoadRefused(e),
        Ok(model) => {
            let n: u64 = input.iter().product();
            let x = Tensor::from_f32("x", input, &vec![0.5; n as usize]);
            let (ran, took) = timed(|| model.infer(vec![x.clone()]));
            assert!(took < RUN_TIMEOUT + SLACK, "{file}: the run ended only after {took:?}");
            let tokio = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (in_task, took) = timed(|| tokio.block_on(model.infer_async(vec![x])));
            assert!(took < RUN_TIMEOUT + SLACK, "{file}: the run in a task ended only after {took:?}");
            let [ran, in_task] = [ran, in_task].map(|r| match r {
                Ok(outputs) => Outcome::Ran(outputs),
                Err(e) => Outcome::RunRefused(e),
            });
            assert_eq!(describe(&ran), describe(&in_task), "{file}: blocking and in a task");
            ran
        }
    };
    eprintln!("{file}: {}", describe(&outcome));
    h.still_serves();
    outcome
}

fn describe(outcome: &Outcome) -> String {
    let short = |e: &Error| {
        let text = e.to_string();
        let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
        text[..cut].to_string()
    };
    match outcome {
        Outcome::LoadRefused(e) => format!("refused at load: {}", short(e)),
        Outcome::RunRefused(e) => format!("refused at run: {}", short(e)),
        Outcome::Ran(o) => format!("ran: {:?}", o.iter().map(|t| (&t.name, &t.shape)).collect::<Vec<_>>()),
    }
}

/// The load was refused with the guest's model error whose message names one of `needles`.
fn model_error(file: &str, outcome: &Outcome, needles: &[&str]) {
    match outcome {
        Outcome::LoadRefused(Error::Sandbox(SandboxError::Guest {
            kind: GuestErrorKind::Model,
            message,
        })) => {
            assert!(
                needles.iter().any(|n| message.contains(n)),
                "{file}: model error {message:?} names none of {needles:?}"
            );
        }
        other => panic!("{file}: expected a model error at load, got {}", describe(other)),
    }
}

/// The guest panicked (tract aborts on a panic in wasm) and the sandbox turned it into a trap.
fn contained_panic(file: &str, outcome: &Outcome) {
    match outcome {
        Outcome::LoadRefused(Error::Sandbox(SandboxError::Trap(message))) => {
            assert!(message.contains("panicked"), "{file}: {message}");
        }
        other => panic!("{file}: expected a contained panic, got {}", describe(other)),
    }
}

/// Either a model error naming one of `needles` or a contained panic: for inputs that make
/// tract 0.23.9 panic, where a later tract may return an error instead.
fn model_error_or_contained_panic(file: &str, outcome: &Outcome, needles: &[&str]) {
    match outcome {
        Outcome::LoadRefused(Error::Sandbox(SandboxError::Trap(_))) => contained_panic(file, outcome),
        _ => model_error(file, outcome, needles),
    }
}

fn ran_to(file: &str, outcome: &Outcome, shape: &[u64], expected: Option<&[f32]>) {
    match outcome {
        Outcome::Ran(outputs) => {
            assert_eq!(outputs.len(), 1, "{file}");
            let y = &outputs[0];
            assert_eq!((y.name.as_str(), y.shape.as_slice()), ("y", shape), "{file}");
            let values = y.to_f32().unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{file}: {values:?}");
            if let Some(expected) = expected {
                assert_eq!(values, expected, "{file}");
            }
        }
        other => panic!("{file}: expected a run, got {}", describe(other)),
    }
}

#[test]
fn endless_and_exponential_models_stop_at_a_limit() {
    let h = Harness::yielding();
    // tract 0.23.9 has no Loop operator: an endless Loop cannot start. (Endless computation in
    // operators tract does run is stopped by the deadline: hostile.rs, slow_matmul_chain.)
    let o = attack(&h, "endless_loop.onnx", &[1, 1], &[1, 1]);
    model_error("endless_loop.onnx", &o, &["Loop"]);

    // 2^40 elements by doubling at run time: the memory cap stops it.
    let o = attack(&h, "expand_exponential.onnx", &[1, 1], &[1, 1]);
    assert!(
        matches!(o, Outcome::RunRefused(Error::Sandbox(SandboxError::MemoryCap(cap))) if cap == 256 << 20),
        "expand_exponential.onnx: {}",
        describe(&o)
    );

    // A squared-and-squared-again constant shape, folded at load: refused by size, also when
    // the int64 products wrap around.
    for file in ["constant_of_shape_squared.onnx", "constant_of_shape_squared_wrap.onnx"] {
        let o = attack(&h, file, &[1, 1], &[1, 1]);
        model_error(file, &o, &["too large"]);
    }
}

#[test]
fn tensors_whose_dims_data_or_types_lie_are_refused() {
    let h = Harness::yielding();
    for (file, needles) in [
        ("dims_product_overflow.onnx", &["does not match shape", "is negative or too large"][..]),
        ("dims_negative.onnx", &["Negative dimension", "is negative or too large"]),
        ("raw_data_too_long.onnx", &["does not match shape"]),
        ("initializer_2gib_declared.onnx", &["does not match shape"]),
        ("initializer_2gib_no_data.onnx", &["ShapeError"]),
        ("raw_data_length_2gib.onnx", &["failed to decode Protobuf", "buffer underflow"]),
        ("unknown_dtype_initializer.onnx", &["unknown ONNX TensorProto.DataType"]),
        ("unknown_dtype_input.onnx", &["unknown ONNX TensorProto.DataType"]),
    ] {
        let o = attack(&h, file, &[1, 1], &[1, 1]);
        model_error(file, &o, needles);
    }
    // tract 0.23.9 reads dims with `as usize`, which truncates to 32 bits in wasm32: [2^32 + 1]
    // with 4 bytes of data would become a 1-element tensor and the model would run (upstream
    // bug, see tests/ADVERSARIAL.md). The guest refuses such dims before tract sees them.
    let o = attack(&h, "dims_wrap_usize32.onnx", &[1, 1], &[1, 1]);
    model_error("dims_wrap_usize32.onnx", &o, &["is negative or too large"]);
    // A STRING initializer given as raw_data reaches tract's `unimplemented!()`: a panic inside
    // the guest, which the sandbox turns into a trap of this load only.
    let o = attack(&h, "string_raw_data.onnx", &[1, 1], &[1, 1]);
    model_error_or_contained_panic("string_raw_data.onnx", &o, &["String", "string"]);
}

#[test]
fn missing_graph_and_missing_attributes_are_model_errors() {
    let h = Harness::yielding();
    let o = attack(&h, "missing_graph.onnx", &[1, 1], &[1, 1]);
    model_error("missing_graph.onnx", &o, &["does not contain a graph"]);
    for (file, needle) in [
        ("concat_without_axis.onnx", "expected attribute 'axis'"),
        ("cast_without_to.onnx", "expected attribute 'to'"),
        ("constant_without_value.onnx", "Could not extract value"),
    ] {
        let o = attack(&h, file, &[1, 4], &[1, 4]);
        model_error(file, &o, &[needle]);
    }
}

#[test]
fn deeply_nested_subgraphs_are_refused_by_the_decoder_or_run() {
    let h = Harness::yielding();
    // Hundreds deep: the protobuf decoder's recursion limit (100 message levels) refuses them
    // before anything recurses over the graph.
    for file in ["nested_if_300.onnx", "nested_loop_300.onnx"] {
        let o = attack(&h, file, &[1, 1], &[1, 1]);
        model_error(file, &o, &["failed to decode Protobuf"]);
    }
    // 30 deep fits under the limit: a valid model, which runs (x > 0 takes every then-branch
    // down to the Identity at the bottom).
    let o = attack(&h, "nested_if_30.onnx", &[1, 1], &[1, 1]);
    ran_to("nested_if_30.onnx", &o, &[1, 1], Some(&[0.5]));
}

#[test]
fn published_tract_crash_inputs_are_contained() {
    let h = Harness::yielding();
    // sonos/tract#163 and #1177 (Einsum form): valid models; they load and compute.
    let o = attack(&h, "tract_163_reshape_minus_one.onnx", &[1, 3, 8, 8], &[1, 4]);
    ran_to("tract_163_reshape_minus_one.onnx", &o, &[1, 4], None);
    let o = attack(&h, "tract_1177_einsum_scalar.onnx", &[1, 4], &[1, 1]);
    ran_to("tract_1177_einsum_scalar.onnx", &o, &[1, 1], Some(&[3.0])); // 0.5 * (0+1+2+3)
    // #1177's class is still live in tract 0.23.9 for MatMul with a rank-0 operand: tract
    // panics (smallvec insert out of bounds) and the sandbox contains it.
    let o = attack(&h, "tract_1177_matmul_scalar.onnx", &[1, 4], &[1, 4]);
    model_error_or_contained_panic("tract_1177_matmul_scalar.onnx", &o, &["MatMul", "rank"]);
    // #499 (missing graph) is missing_graph.onnx above. #2372, #2390, #2391: fixed upstream in
    // the tract we ship; each is a model error naming the defect.
    for (file, needle) in [
        ("tract_2372_constant_without_tensor.onnx", "its tensor (t) field is absent"),
        ("tract_2372_if_without_graph.onnx", "its graph (g) field is absent"),
        ("tract_2391_concat_no_inputs.onnx", "Wrong input number"),
        ("tract_2391_squeeze_no_inputs.onnx", "Wrong input number"),
        ("tract_2391_gemm_one_input.onnx", "Wrong input number"),
        ("tract_2391_reshape_one_input.onnx", "Wrong input number"),
        ("tract_2391_lstm_without_outputs.onnx", "Wrong output number"),
    ] {
        let o = attack(&h, file, &[1, 4], &[1, 4]);
        model_error(file, &o, &[needle]);
    }
    let o = attack(&h, "tract_2390_raw_data_short.onnx", &[1, 1], &[1, 1]);
    model_error("tract_2390_raw_data_short.onnx", &o, &["does not match shape"]);
}
