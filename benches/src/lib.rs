//! Support for the benchmarks.

/// Clears the upper halves of the vector registers after native tract ran on this thread.
///
/// tract's native AVX-512/AVX2 kernels return with the upper register state dirty (including
/// zmm16-31, which `vzeroupper` does not touch). Cranelift's code for the wasm guest uses legacy
/// SSE encodings for some instructions, and on Intel cores each of them then pays a transition
/// penalty: measured here, the sandbox ran 12x (digits) to 200x (silero VAD) slower on a thread
/// that had just run native tract. The warden daemon never runs tract natively, so only a process
/// that mixes both (these benchmarks) needs this between the two.
#[allow(unsafe_code)]
pub fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            fn zero_high_zmm() {
                // SAFETY: only zeroes zmm16-31 (declared clobbered) and the upper halves of the
                // rest; AVX-512F was checked at run time by the caller.
                unsafe {
                    std::arch::asm!(
                        "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17",
                        "vpxord zmm18, zmm18, zmm18", "vpxord zmm19, zmm19, zmm19",
                        "vpxord zmm20, zmm20, zmm20", "vpxord zmm21, zmm21, zmm21",
                        "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23",
                        "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25",
                        "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
                        "vpxord zmm28, zmm28, zmm28", "vpxord zmm29, zmm29, zmm29",
                        "vpxord zmm30, zmm30, zmm30", "vpxord zmm31, zmm31, zmm31",
                        "vzeroupper",
                        out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                        out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
                        out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
                        options(nomem, nostack),
                    );
                }
            }
            // SAFETY: AVX-512F is available (checked just above).
            unsafe { zero_high_zmm() }
        } else if std::arch::is_x86_feature_detected!("avx") {
            #[target_feature(enable = "avx")]
            fn zeroupper() {
                // SAFETY: `vzeroupper` only needs AVX, checked by the caller.
                unsafe { std::arch::x86_64::_mm256_zeroupper() }
            }
            // SAFETY: AVX is available (checked just above).
            unsafe { zeroupper() }
        }
    }
}
