//! The channel-inner depthwise convolution, run natively for the guest
//! (`warden_wire::guest::kernels::DEPTHWISE_C`).
//!
//! tract lays depthwise convolutions out channel-last in the guest, because it has a
//! channel-inner kernel for WebAssembly; that kernel took a fifth of PP-OCR recognition's time
//! in the sandbox. The guest registers a kernel of the same contract (tract-linalg's
//! `DepthwiseCF32`) that hands each call here: one run of `len` output positions over
//! `channels` contiguous channels. [`DepthwiseC::run`] reads the tap list from guest memory,
//! checks that every element the run reads (input, kernel, bias) or writes (output) lies inside
//! the guest's memory, with f32 alignment, and that the run is at most `MAX_DEPTHWISE_WORK`
//! multiply-adds (the deadline cannot interrupt a host call; the guest splits longer runs), and
//! only then runs the native kernel with host pointers. Anything else traps the guest. Same trust boundary as the matrix kernels
//! (ARCHITECTURE.md, "Trust boundary").
//!
//! The native kernel is tract-linalg's own where this CPU has one (aarch64). tract has none
//! for x86_64, so there it is [`depthwise_c_avx512`] or [`depthwise_c_avx`] below: the
//! WebAssembly kernel's loops, sixteen or eight lanes wide, with the same operations in the same
//! order (the bias, then per tap a multiply and an add, no FMA), so its results equal the
//! guest's own kernel's bit for bit (a NaN's sign and payload aside, which WebAssembly does not
//! specify either).

use warden_wire::guest::kernels::{MAX_DEPTHWISE_WORK, MAX_TAPS};

use super::kernels::{KernelFault, in_memory};

/// tract-linalg's channel-inner depthwise contract (`tract_linalg::routines::DepthwiseCF32`).
type DepthwiseCF32 = unsafe fn(
    *const f32,
    *mut f32,
    *const f32,
    &[usize],
    &[isize],
    *const f32,
    usize,
    usize,
    usize,
    isize,
    isize,
);

/// One `depthwise_c` call's arguments, as the guest passed them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Args {
    pub input: u32,
    pub output: u32,
    pub kernel: u32,
    pub tap_indices: u32,
    pub offsets: u32,
    pub taps: u32,
    pub bias: u32,
    pub channels: u32,
    pub k_stride: u32,
    pub len: u32,
    pub in_stride: i32,
    pub out_stride: i32,
}

/// The native channel-inner depthwise kernel, if this CPU has one.
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseC {
    name: &'static str,
    run: DepthwiseCF32,
}

impl std::fmt::Debug for DepthwiseC {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl DepthwiseC {
    /// tract's native kernel where it has one, else ours with AVX-512, else with AVX, else
    /// none.
    pub(crate) fn native() -> Option<DepthwiseC> {
        Self::runnable().into_iter().next()
    }

    /// Every kernel this CPU runs, the preferred first.
    fn runnable() -> Vec<DepthwiseC> {
        let mut kernels = Vec::new();
        if let Some(run) = tract_linalg::routines::depthwise_c_f32() {
            kernels.push(DepthwiseC { name: "tract_depthwise_c_f32", run });
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(DepthwiseC { name: "warden_avx512_depthwise_c_f32", run: depthwise_c_avx512 });
            }
            if std::arch::is_x86_feature_detected!("avx") {
                kernels.push(DepthwiseC { name: "warden_avx_depthwise_c_f32", run: depthwise_c_avx });
            }
        }
        kernels
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Checks one call against the guest's `memory` and runs it.
    #[allow(unsafe_code)]
    pub(crate) fn run(&self, memory: &mut [u8], a: &Args) -> Result<(), KernelFault> {
        let taps = a.taps as usize;
        if taps > MAX_TAPS {
            return Err(KernelFault(format!("{taps} depthwise taps (at most {MAX_TAPS})")));
        }
        // In u128: the u64 product wraps (2^31 * 2^23 * 1024 is 2^64, so 0), which let a hostile
        // guest past the cap into a run without end.
        let work = u128::from(a.len) * u128::from(a.channels) * taps.max(1) as u128;
        if work > u128::from(MAX_DEPTHWISE_WORK) {
            return Err(KernelFault(format!(
                "a depthwise run of {work} multiply-adds (at most {MAX_DEPTHWISE_WORK} per call)"
            )));
        }
        if a.k_stride < a.channels {
            return Err(KernelFault(format!("kernel stride {} below {} channels", a.k_stride, a.channels)));
        }
        let words = |addr: u32| -> Result<Vec<u32>, KernelFault> {
            let at = in_memory(memory.len(), addr, taps as u64 * 4)?;
            Ok(memory[at..at + 4 * taps]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let tap_indices: Vec<usize> = words(a.tap_indices)?.into_iter().map(|w| w as usize).collect();
        let offsets: Vec<isize> = words(a.offsets)?.into_iter().map(|w| w as i32 as isize).collect();
        if a.len == 0 || a.channels == 0 {
            return Ok(());
        }
        // Every element index the kernel forms, per operand, lies in [lo, hi]: the extremes of
        // `i * stride` over the run, plus those of the taps' offsets, plus `0..channels`.
        let (len, channels) = (i128::from(a.len), i128::from(a.channels));
        let run = |stride: i32| {
            let last = (len - 1) * i128::from(stride);
            (last.min(0), last.max(0) + channels - 1)
        };
        let (mut in_lo, mut in_hi) = run(a.in_stride);
        if !offsets.is_empty() {
            in_lo += offsets.iter().copied().min().map_or(0, |o| o as i128);
            in_hi += offsets.iter().copied().max().map_or(0, |o| o as i128);
        }
        let k_hi = tap_indices.iter().copied().max().map_or(0, |t| t as i128) * i128::from(a.k_stride)
            + channels
            - 1;
        let (out_lo, out_hi) = run(a.out_stride);
        let mem_len = memory.len();
        let base = memory.as_mut_ptr();
        let input = elements(mem_len, base, a.input, in_lo, in_hi, "input")?;
        let kernel = elements(mem_len, base, a.kernel, 0, k_hi, "kernel")?;
        let bias = elements(mem_len, base, a.bias, 0, channels - 1, "bias")?;
        let output = elements(mem_len, base, a.output, out_lo, out_hi, "output")?;
        // SAFETY: `elements` checked that every element index the contract lets the kernel
        // form (`i * in_stride + offsets[t] + c` from `input`, `tap_indices[t] * k_stride + c`
        // from `kernel`, `c` from `bias`, `i * out_stride + c` from `output`, for `i < len`,
        // `c < channels`, every tap) lies inside the guest's memory and that the operands are
        // f32-aligned. Input and output may overlap in a hostile call: the kernel goes through
        // raw pointers only, so that garbles the guest's own result, nothing else. The memory
        // cannot move or shrink while the guest is suspended in this call.
        unsafe {
            (self.run)(
                input.cast_const(),
                output,
                kernel.cast_const(),
                &tap_indices,
                &offsets,
                bias.cast_const(),
                a.channels as usize,
                a.k_stride as usize,
                a.len as usize,
                a.in_stride as isize,
                a.out_stride as isize,
            );
        }
        super::kernels::clear_upper_state();
        Ok(())
    }
}

/// A host pointer to the f32 at guest address `addr`, after checking that elements `lo..=hi`
/// from it all lie in a memory of `mem_len` bytes at `base`, and that `addr` is 4-aligned.
fn elements(
    mem_len: usize,
    base: *mut u8,
    addr: u32,
    lo: i128,
    hi: i128,
    what: &str,
) -> Result<*mut f32, KernelFault> {
    let (first, end) = (i128::from(addr) + 4 * lo, i128::from(addr) + 4 * hi + 4);
    if first < 0 || end > mem_len as i128 {
        return Err(KernelFault(format!(
            "depthwise {what} at {addr:#x} (elements {lo}..={hi}) leaves guest memory"
        )));
    }
    if !addr.is_multiple_of(4) {
        return Err(KernelFault(format!("depthwise {what} at {addr:#x} is not f32-aligned")));
    }
    Ok(base.wrapping_add(addr as usize).cast())
}

/// Defines one x86-64 kernel of tract-linalg's `DepthwiseCF32` contract: the arguments as a
/// [`Run`], its positions `$group` at a time by `Run::$positions`, the rest one at a time.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernel {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $positions:ident, $group:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments, unsafe_code)]
        unsafe fn $name(
            input: *const f32,
            output: *mut f32,
            kernel: *const f32,
            tap_indices: &[usize],
            offsets: &[isize],
            bias: *const f32,
            channels: usize,
            k_stride: usize,
            len: usize,
            in_stride: isize,
            out_stride: isize,
        ) {
            let run =
                Run { input, output, kernel, tap_indices, offsets, bias, channels, k_stride, in_stride, out_stride };
            // SAFETY: the caller's contract covers every element read or written: position
            // `i < len`, channel `c < channels`.
            unsafe {
                let mut i = 0;
                while i + $group <= len {
                    run.$positions::<{ $group }>(i);
                    i += $group;
                }
                while i < len {
                    run.$positions::<1>(i);
                    i += 1;
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_kernel!(
    /// The channel-inner depthwise run (tract-linalg's `DepthwiseCF32` contract) with AVX: the
    /// WebAssembly kernel's loops at eight lanes, 32 channels at a time, then 8, then one, for
    /// [`AVX_POSITIONS`] output positions at a time.
    ///
    /// # Safety
    /// As the contract: every element index formed from each pointer must be valid (see
    /// `DepthwiseCF32`), and the CPU must have AVX.
    depthwise_c_avx,
    "avx",
    avx_positions,
    AVX_POSITIONS
);

#[cfg(target_arch = "x86_64")]
x86_kernel!(
    /// [`depthwise_c_avx`] sixteen lanes wide, for CPUs with AVX-512: 64 channels at a time,
    /// then 16 at a time, the last block masked, for [`AVX512_POSITIONS`] output positions at a
    /// time. The same operations in the same order per lane, so the same bits.
    ///
    /// # Safety
    /// As [`depthwise_c_avx`], and the CPU must have AVX-512F. A masked load reads, and a
    /// masked store writes, no element of a lane the mask leaves out.
    depthwise_c_avx512,
    "avx512f",
    avx512_positions,
    AVX512_POSITIONS
);

/// Output positions [`depthwise_c_avx512`] computes together. Each output's sum is a chain of
/// dependent adds (one per tap, in tap order, for the same bits as the guest's kernel); running
/// several positions at once gives the CPU independent chains to overlap. Four positions of 64
/// channels are 16 of AVX-512's 32 vector registers.
#[cfg(target_arch = "x86_64")]
const AVX512_POSITIONS: usize = 4;

/// Output positions [`depthwise_c_avx`] computes together; two positions of 32 channels are 8
/// of AVX's 16 vector registers.
#[cfg(target_arch = "x86_64")]
const AVX_POSITIONS: usize = 2;

/// One depthwise call's operands, for the x86-64 kernels.
#[cfg(target_arch = "x86_64")]
struct Run<'a> {
    input: *const f32,
    output: *mut f32,
    kernel: *const f32,
    tap_indices: &'a [usize],
    offsets: &'a [isize],
    bias: *const f32,
    channels: usize,
    k_stride: usize,
    in_stride: isize,
    out_stride: isize,
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
impl Run<'_> {
    /// Positions `i..i + P`, every channel: 64 at a time, then 16 at a time, the last block
    /// masked.
    ///
    /// # Safety
    /// As [`depthwise_c_avx512`], for positions `i..i + P` of the run.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn avx512_positions<const P: usize>(&self, i: usize) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's; channel `c + lane` only for `c + lane < channels`.
        unsafe {
            let iptr: [*const f32; P] =
                std::array::from_fn(|p| self.input.offset((i + p) as isize * self.in_stride));
            let optr: [*mut f32; P] =
                std::array::from_fn(|p| self.output.offset((i + p) as isize * self.out_stride));
            let mut c = 0usize;
            while c + 64 <= self.channels {
                let b = [0, 16, 32, 48].map(|j| _mm512_loadu_ps(self.bias.add(c + j)));
                let mut acc = [b; P];
                for (&kix, &off) in self.tap_indices.iter().zip(self.offsets) {
                    let kt = self.kernel.add(kix * self.k_stride + c);
                    let k = [0, 16, 32, 48].map(|j| _mm512_loadu_ps(kt.add(j)));
                    for (acc, iptr) in acc.iter_mut().zip(iptr) {
                        let xt = iptr.offset(off).add(c);
                        for (j, (acc, k)) in acc.iter_mut().zip(k).enumerate() {
                            let x = _mm512_loadu_ps(xt.add(16 * j));
                            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(x, k));
                        }
                    }
                }
                for (acc, optr) in acc.into_iter().zip(optr) {
                    for (j, acc) in acc.into_iter().enumerate() {
                        _mm512_storeu_ps(optr.add(c + 16 * j), acc);
                    }
                }
                c += 64;
            }
            while c < self.channels {
                let left = self.channels - c;
                let mask: __mmask16 = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
                let mut acc = [_mm512_maskz_loadu_ps(mask, self.bias.add(c)); P];
                for (&kix, &off) in self.tap_indices.iter().zip(self.offsets) {
                    let k = _mm512_maskz_loadu_ps(mask, self.kernel.add(kix * self.k_stride + c));
                    for (acc, iptr) in acc.iter_mut().zip(iptr) {
                        let x = _mm512_maskz_loadu_ps(mask, iptr.offset(off).add(c));
                        *acc = _mm512_add_ps(*acc, _mm512_mul_ps(x, k));
                    }
                }
                for (acc, optr) in acc.into_iter().zip(optr) {
                    _mm512_mask_storeu_ps(optr.add(c), mask, acc);
                }
                c += 16;
            }
        }
    }

    /// Positions `i..i + P`, every channel: 32 at a time, then 8, then one, as the WebAssembly
    /// kernel's loops at eight lanes.
    ///
    /// # Safety
    /// As [`depthwise_c_avx`], for positions `i..i + P` of the run.
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn avx_positions<const P: usize>(&self, i: usize) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's; channel `c + lane` only for `c + lane < channels`.
        unsafe {
            let iptr: [*const f32; P] =
                std::array::from_fn(|p| self.input.offset((i + p) as isize * self.in_stride));
            let optr: [*mut f32; P] =
                std::array::from_fn(|p| self.output.offset((i + p) as isize * self.out_stride));
            let mut c = 0usize;
            while c + 32 <= self.channels {
                let b = [0, 8, 16, 24].map(|j| _mm256_loadu_ps(self.bias.add(c + j)));
                let mut acc = [b; P];
                for (&kix, &off) in self.tap_indices.iter().zip(self.offsets) {
                    let kt = self.kernel.add(kix * self.k_stride + c);
                    let k = [0, 8, 16, 24].map(|j| _mm256_loadu_ps(kt.add(j)));
                    for (acc, iptr) in acc.iter_mut().zip(iptr) {
                        let xt = iptr.offset(off).add(c);
                        for (j, (acc, k)) in acc.iter_mut().zip(k).enumerate() {
                            let x = _mm256_loadu_ps(xt.add(8 * j));
                            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, k));
                        }
                    }
                }
                for (acc, optr) in acc.into_iter().zip(optr) {
                    for (j, acc) in acc.into_iter().enumerate() {
                        _mm256_storeu_ps(optr.add(c + 8 * j), acc);
                    }
                }
                c += 32;
            }
            while c + 8 <= self.channels {
                let mut acc = [_mm256_loadu_ps(self.bias.add(c)); P];
                for (&kix, &off) in self.tap_indices.iter().zip(self.offsets) {
                    let k = _mm256_loadu_ps(self.kernel.add(kix * self.k_stride + c));
                    for (acc, iptr) in acc.iter_mut().zip(iptr) {
                        let x = _mm256_loadu_ps(iptr.offset(off).add(c));
                        *acc = _mm256_add_ps(*acc, _mm256_mul_ps(x, k));
                    }
                }
                for (acc, optr) in acc.into_iter().zip(optr) {
                    _mm256_storeu_ps(optr.add(c), acc);
                }
                c += 8;
            }
            while c < self.channels {
                let mut sum = [*self.bias.add(c); P];
                for (&kix, &off) in self.tap_indices.iter().zip(self.offsets) {
                    let k = *self.kernel.add(kix * self.k_stride + c);
                    for (sum, iptr) in sum.iter_mut().zip(iptr) {
                        *sum += k * *iptr.offset(off).add(c);
                    }
                }
                for (sum, optr) in sum.into_iter().zip(optr) {
                    *optr.add(c) = sum;
                }
                c += 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A 4 KiB-aligned guest memory of `len` bytes, like wasmtime's.
    struct Memory(Vec<u8>, usize);

    impl Memory {
        fn new(len: usize) -> Memory {
            let v = vec![0u8; len + 4096];
            let skip = v.as_ptr().align_offset(4096);
            Memory(v, skip)
        }
        fn bytes(&mut self) -> &mut [u8] {
            let (skip, len) = (self.1, self.0.len() - 4096);
            &mut self.0[skip..skip + len]
        }
        fn put_f32(&mut self, addr: usize, v: &[f32]) {
            for (i, x) in v.iter().enumerate() {
                self.bytes()[addr + 4 * i..addr + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
            }
        }
        fn put_u32(&mut self, addr: usize, v: &[u32]) {
            for (i, x) in v.iter().enumerate() {
                self.bytes()[addr + 4 * i..addr + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
            }
        }
        fn f32_at(&mut self, addr: usize) -> f32 {
            let b = &self.bytes()[addr..addr + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    fn value(i: usize) -> f32 {
        match i % 29 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -0.0,
            3 => f32::MIN_POSITIVE / 16.0,
            k => ((i.wrapping_mul(2_654_435_761) % 2003) as f32 - 1001.0) / (k as f32 * 3.7),
        }
    }

    /// The contract's arithmetic, one output at a time: the bias, then per tap `+= k * x`.
    fn reference(mem: &mut Memory, a: &Args, taps: &[(usize, isize)]) -> Vec<f32> {
        let mut out = Vec::new();
        for i in 0..a.len as isize {
            for c in 0..a.channels as isize {
                let mut sum = mem.f32_at(a.bias as usize + 4 * c as usize);
                for &(kix, off) in taps {
                    let k = mem.f32_at(a.kernel as usize + 4 * (kix * a.k_stride as usize + c as usize));
                    let x =
                        mem.f32_at((a.input as isize + 4 * (i * a.in_stride as isize + off + c)) as usize);
                    sum += k * x;
                }
                out.push(sum);
            }
        }
        out
    }

    fn setup(mem: &mut Memory, channels: u32, taps: &[(usize, isize)], len: u32, in_stride: i32) -> Args {
        let a = Args {
            input: 0x10000,
            output: 0x40000,
            kernel: 0x30000,
            tap_indices: 0x100,
            offsets: 0x1100,
            taps: taps.len() as u32,
            bias: 0x2000,
            channels,
            k_stride: channels + 3,
            len,
            in_stride,
            out_stride: channels as i32 + 1,
        };
        let indices: Vec<u32> = taps.iter().map(|t| t.0 as u32).collect();
        let offsets: Vec<u32> = taps.iter().map(|t| t.1 as i32 as u32).collect();
        mem.put_u32(a.tap_indices as usize, &indices);
        mem.put_u32(a.offsets as usize, &offsets);
        // Values everywhere the operands live: bias, input, kernel (the output starts at 0x40000).
        mem.put_f32(0x2000, &(0..(0x40000 - 0x2000) / 4).map(value).collect::<Vec<_>>());
        a
    }

    /// The native kernel through the checked call equals the contract's arithmetic bit for bit,
    /// NaNs as NaNs (so the guest's own wasm kernel, which does the same operations in the same
    /// order), at every channel count around the vector widths, with taps before and after the
    /// center and a negative stride, and writes no byte outside its output.
    #[test]
    fn runs_the_contracts_arithmetic_bit_for_bit() {
        let kernels = DepthwiseC::runnable();
        if kernels.is_empty() {
            eprintln!("no native depthwise kernel on this CPU; nothing to check");
        }
        for dw in kernels {
            each_kernel_runs_the_contracts_arithmetic(dw);
        }
    }

    fn each_kernel_runs_the_contracts_arithmetic(dw: DepthwiseC) {
        let taps3x3: Vec<(usize, isize)> =
            (0..9).map(|t| (t, (t as isize / 3 - 1) * 40 * 7 + (t as isize % 3 - 1) * 40)).collect();
        for channels in [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 88, 127, 200] {
            for (taps, len, stride) in
                [(&taps3x3[..], 5, 40), (&taps3x3[..2], 3, -40), (&taps3x3[4..5], 7, 80), (&[][..], 2, 40)]
            {
                let mut mem = Memory::new(0x80000);
                let a = setup(&mut mem, channels, taps, len, stride);
                let want = reference(&mut mem, &a, taps);
                let before = mem.bytes().to_vec();
                dw.run(mem.bytes(), &a).unwrap();
                let mut got = Vec::new();
                let mut written = vec![false; before.len()];
                for i in 0..len as usize {
                    for c in 0..channels as usize {
                        let at = a.output as usize + 4 * (i * a.out_stride as usize + c);
                        got.push(mem.f32_at(at));
                        written[at..at + 4].fill(true);
                    }
                }
                // Nothing else changed: not the gap after each output row, not past the last.
                let stray =
                    mem.bytes().iter().zip(&before).zip(&written).position(|((x, y), w)| !w && x != y);
                assert_eq!(stray, None, "{dw:?}, {channels} channels: a byte outside the output changed");
                // A NaN's sign and payload depend on operand order inside the CPU; WebAssembly
                // leaves them unspecified too. Everything else must match to the bit.
                let key = |x: &f32| if x.is_nan() { u32::MAX } else { x.to_bits() };
                let (got, want): (Vec<u32>, Vec<u32>) =
                    (got.iter().map(key).collect(), want.iter().map(key).collect());
                assert_eq!(got, want, "{dw:?}, {channels} channels, {} taps, stride {stride}", taps.len());
            }
        }
    }

    /// Every range is checked before anything is written: each bad call is refused, naming
    /// what it would have touched, and the output stays as it was.
    #[test]
    fn refuses_runs_outside_memory_and_leaves_the_output_alone() {
        let Some(dw) = DepthwiseC::native() else { return };
        let taps = [(0usize, 0isize), (1, 8)];
        type Case = (&'static str, fn(&mut Args), &'static str);
        let cases: [Case; 9] = [
            ("output past the end", |a| a.output = 0x80000 - 8, "output"),
            ("output below 0", |a| (a.output, a.out_stride) = (0, -8), "output"),
            ("input below 0", |a| a.input = 0, "input"),
            ("input stride past the end", |a| a.in_stride = 0x10000, "input"),
            ("misaligned kernel", |a| a.kernel += 2, "not f32-aligned"),
            ("bias past the end", |a| a.bias = 0x80000 - 4, "bias"),
            ("taps past the end", |a| a.tap_indices = 0x80000 - 4, "outside guest memory"),
            ("stride below channels", |a| a.k_stride = 1, "kernel stride"),
            ("too much work", |a| (a.len, a.in_stride, a.out_stride) = (1 << 22, 0, 0), "multiply-adds"),
        ];
        for (what, change, refusal) in cases {
            let mut mem = Memory::new(0x80000);
            let mut a = setup(&mut mem, 8, &taps, 4, 16);
            mem.put_u32(a.offsets as usize, &[(-4i32) as u32, 8]);
            change(&mut a);
            let before = mem.bytes().to_vec();
            let err = dw.run(mem.bytes(), &a).unwrap_err().to_string();
            assert!(err.contains(refusal), "{what}: {err}");
            assert!(mem.bytes() == &before[..], "{what}: memory changed");
        }
    }
}
