#![no_main]

libfuzzer_sys::fuzz_target!(
    // Build the sandbox (and compile or load the guest) before the first input is timed.
    init: warden_fuzz::onnx_sandbox_init(),
    |data: &[u8]| {
        let _ = warden_fuzz::onnx_sandbox(data);
    }
);
