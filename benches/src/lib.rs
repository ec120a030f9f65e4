//! Support for the benchmarks.

/// Clears the upper halves of the AVX registers (`vzeroupper`).
///
/// tract's native AVX-512/AVX2 kernels return with the upper register state dirty. Cranelift's
/// code for the wasm guest uses legacy SSE encodings for some instructions, and on Intel cores
/// every such instruction then pays a transition penalty: measured here, the sandbox ran 12x
/// (digits) to 200x (silero VAD) slower on a thread that had just run native tract. The warden
/// daemon never runs tract natively, so only a process mixing both (these benchmarks, the
/// reference tests) needs this between the two.
#[allow(unsafe_code)]
pub fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[target_feature(enable = "avx")]
        fn zeroupper() {
            // SAFETY: `_mm256_zeroupper` only needs AVX, which the caller checked at run time.
            unsafe { std::arch::x86_64::_mm256_zeroupper() }
        }
        // SAFETY: AVX is available (checked just above).
        unsafe { zeroupper() }
    }
}
