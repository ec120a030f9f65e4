//! Variable-time fixed-base scalar multiplication on edwards25519, for the device-key check in
//! [`super::device_key`]: `compress([s]B - [k]A)` from precomputed tables of `B` and `A`.
//!
//! Why not curve25519-dalek's own tables: its `EdwardsBasepointTable` is constant-time, so each
//! of its 64 lookups reads all 8 entries of a row with conditional moves, and its table types
//! cannot be read any other way. A signature check handles public data only (the key, the
//! signature, the message), so it may take time that depends on them, as ed25519-dalek's own
//! `verify_strict` does (its double-base multiplication is variable-time). Here a lookup reads
//! the one entry it needs, and the basepoint's table can be large enough for 32 additions.
//!
//! What is written here and what is not:
//! - The field arithmetic is fiat-crypto's (`curve25519_64`), generated from a machine-checked
//!   proof; it is the same 5x51-bit representation as curve25519-dalek's serial backend.
//! - The point formulas are curve25519-dalek's (extended twisted Edwards coordinates,
//!   Hisil-Wong-Carter-Dawson), transcribed: mixed addition with affine Niels points, addition of
//!   extended points, doubling. They are complete on edwards25519: no input needs a special case.
//! - Encoding and decoding follow RFC 8032 as curve25519-dalek does (`compress`, and
//!   `decompress` with the same square root of a ratio).
//! - The tests compare every result with curve25519-dalek on random and edge-case scalars and
//!   points, and `device_key`'s tests compare whole checks with ed25519-dalek's `verify_strict`.
//!
//! Tables (each entry an affine Niels point, 120 bytes):
//! - the basepoint's: radix 256, every position (32 rows of 128 multiples, 480 KiB, built once
//!   per process in about 4 ms): at most 32 additions, no doublings;
//! - a key's: radix 16, even positions only (32 rows of 8, 30 KiB, about 0.23 ms): at most 64
//!   additions and 4 doublings, as curve25519-dalek's radix-16 table does.

#![allow(non_snake_case)]

use std::sync::LazyLock;

use curve25519_dalek::Scalar;
use curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED;
use fiat::{fiat_25519_loose_field_element as Loose, fiat_25519_tight_field_element as Tight};
use fiat_crypto::curve25519_64 as fiat;

/// A field element, reduced enough for any operation (fiat-crypto's "tight" bounds).
#[derive(Clone, Copy)]
struct Fe(Tight);

/// The result of an addition or subtraction: a multiplication's input, or carried to an `Fe`.
#[derive(Clone, Copy)]
struct Sum(Loose);

impl std::fmt::Debug for Fe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fe({})", hex::encode(self.to_bytes()))
    }
}

impl Fe {
    const ZERO: Fe = Fe(Tight([0; 5]));
    const ONE: Fe = Fe(Tight([1, 0, 0, 0, 0]));
    /// `d = -121665/121666`, as curve25519-dalek's `EDWARDS_D` (checked in the tests).
    const D: Fe =
        Fe(Tight([929955233495203, 466365720129213, 1662059464998953, 2033849074728123, 1442794654840575]));
    /// `2d`, as curve25519-dalek's `EDWARDS_D2`.
    const D2: Fe =
        Fe(Tight([1859910466990425, 932731440258426, 1072319116312658, 1815898335770999, 633789495995903]));
    /// A square root of -1, as curve25519-dalek's `SQRT_M1`.
    const SQRT_M1: Fe =
        Fe(Tight([1718705420411056, 234908883556509, 2233514472574048, 2117202627021982, 765476049583133]));

    /// The low 255 bits of `bytes`, reduced (the top bit is ignored, as RFC 8032's decoding
    /// and curve25519-dalek's do).
    fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut b = *bytes;
        b[31] &= 0x7f;
        let mut out = Tight([0; 5]);
        fiat::fiat_25519_from_bytes(&mut out, &b);
        Fe(out)
    }

    /// The canonical encoding (fully reduced).
    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0; 32];
        fiat::fiat_25519_to_bytes(&mut out, &self.0);
        out
    }

    fn relax(self) -> Sum {
        let mut out = Loose([0; 5]);
        fiat::fiat_25519_relax(&mut out, &self.0);
        Sum(out)
    }

    fn add(self, b: Fe) -> Sum {
        let mut out = Loose([0; 5]);
        fiat::fiat_25519_add(&mut out, &self.0, &b.0);
        Sum(out)
    }

    fn sub(self, b: Fe) -> Sum {
        let mut out = Loose([0; 5]);
        fiat::fiat_25519_sub(&mut out, &self.0, &b.0);
        Sum(out)
    }

    fn neg(self) -> Fe {
        let mut out = Loose([0; 5]);
        fiat::fiat_25519_opp(&mut out, &self.0);
        Sum(out).carry()
    }

    fn mul(self, b: Fe) -> Fe {
        self.relax().mul(b.relax())
    }

    fn square(self) -> Fe {
        self.relax().square()
    }

    fn pow2k(self, k: u32) -> Fe {
        (0..k).fold(self, |x, _| x.square())
    }

    fn is_negative(self) -> bool {
        self.to_bytes()[0] & 1 == 1
    }

    fn equals(self, b: Fe) -> bool {
        self.to_bytes() == b.to_bytes()
    }

    /// `(self^(2^250 - 1), self^11)`: curve25519-dalek's addition chain.
    fn pow22501(self) -> (Fe, Fe) {
        let t0 = self.square();
        let t1 = t0.square().square();
        let t2 = self.mul(t1);
        let t3 = t0.mul(t2);
        let t4 = t3.square();
        let t5 = t2.mul(t4);
        let t6 = t5.pow2k(5);
        let t7 = t6.mul(t5);
        let t8 = t7.pow2k(10);
        let t9 = t8.mul(t7);
        let t10 = t9.pow2k(20);
        let t11 = t10.mul(t9);
        let t12 = t11.pow2k(10);
        let t13 = t12.mul(t7);
        let t14 = t13.pow2k(50);
        let t15 = t14.mul(t13);
        let t16 = t15.pow2k(100);
        let t17 = t16.mul(t15);
        let t18 = t17.pow2k(50);
        let t19 = t18.mul(t13);
        (t19, t3)
    }

    /// `self^(p - 2)`: the inverse, or 0 for 0.
    fn invert(self) -> Fe {
        let (t19, t3) = self.pow22501();
        t19.pow2k(5).mul(t3)
    }

    /// `self^((p - 5) / 8)`.
    fn pow_p58(self) -> Fe {
        let (t19, _) = self.pow22501();
        self.mul(t19.pow2k(2))
    }

    /// The nonnegative square root of `u/v`, if there is one (curve25519-dalek's
    /// `sqrt_ratio_i`, without its constant-time selection).
    fn sqrt_ratio(u: Fe, v: Fe) -> Option<Fe> {
        let v3 = v.square().mul(v);
        let v7 = v3.square().mul(v);
        let mut r = u.mul(v3).mul(u.mul(v7).pow_p58());
        let check = v.mul(r.square());
        let minus_u = u.neg();
        let correct = check.equals(u);
        let flipped = check.equals(minus_u);
        let flipped_i = check.equals(minus_u.mul(Fe::SQRT_M1));
        if flipped || flipped_i {
            r = r.mul(Fe::SQRT_M1);
        }
        if r.is_negative() {
            r = r.neg();
        }
        (correct || flipped).then_some(r)
    }
}

impl Sum {
    fn carry(self) -> Fe {
        let mut out = Tight([0; 5]);
        fiat::fiat_25519_carry(&mut out, &self.0);
        Fe(out)
    }

    fn mul(self, b: Sum) -> Fe {
        let mut out = Tight([0; 5]);
        fiat::fiat_25519_carry_mul(&mut out, &self.0, &b.0);
        Fe(out)
    }

    fn square(self) -> Fe {
        let mut out = Tight([0; 5]);
        fiat::fiat_25519_carry_square(&mut out, &self.0);
        Fe(out)
    }
}

/// A point in extended coordinates: `x = X/Z`, `y = Y/Z`, `xy = T/Z`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    X: Fe,
    Y: Fe,
    Z: Fe,
    T: Fe,
}

/// A sum or double before its conversion back: `x = X/Z`, `y = Y/T` ("P1xP1").
struct Completed {
    X: Sum,
    Y: Sum,
    Z: Sum,
    T: Sum,
}

/// An affine point as a table holds it: `(y + x, y - x, 2dxy)`.
#[derive(Clone, Copy, Debug)]
struct Niels {
    y_plus_x: Fe,
    y_minus_x: Fe,
    xy2d: Fe,
}

impl Completed {
    fn point(&self) -> Point {
        Point { X: self.X.mul(self.T), Y: self.Y.mul(self.Z), Z: self.Z.mul(self.T), T: self.X.mul(self.Y) }
    }
}

impl Point {
    const IDENTITY: Point = Point { X: Fe::ZERO, Y: Fe::ONE, Z: Fe::ONE, T: Fe::ZERO };

    /// Decodes an encoding as RFC 8032 and curve25519-dalek do (a `y` of 255 bits, reduced; the
    /// sign of `x` in the top bit); `None` if no point has that `y`.
    pub(crate) fn decompress(bytes: &[u8; 32]) -> Option<Point> {
        let y = Fe::from_bytes(bytes);
        let yy = y.square();
        let u = yy.sub(Fe::ONE).carry();
        let v = yy.mul(Fe::D).add(Fe::ONE).carry();
        let mut x = Fe::sqrt_ratio(u, v)?;
        if bytes[31] >> 7 == 1 {
            x = x.neg();
        }
        Some(Point { X: x, Y: y, Z: Fe::ONE, T: x.mul(y) })
    }

    /// The canonical encoding.
    pub(crate) fn compress(&self) -> [u8; 32] {
        let z_inv = self.Z.invert();
        let x = self.X.mul(z_inv);
        let mut bytes = self.Y.mul(z_inv).to_bytes();
        bytes[31] ^= u8::from(x.is_negative()) << 7;
        bytes
    }

    /// `self + q`, or `self - q` if `negate`.
    fn add_niels(&self, q: &Niels, negate: bool) -> Completed {
        let (plus, minus) = if negate { (q.y_minus_x, q.y_plus_x) } else { (q.y_plus_x, q.y_minus_x) };
        let pp = self.Y.add(self.X).mul(plus.relax());
        let mm = self.Y.sub(self.X).mul(minus.relax());
        let txy2d = self.T.mul(q.xy2d);
        let z2 = self.Z.add(self.Z).carry();
        let (z, t) = if negate { (z2.sub(txy2d), z2.add(txy2d)) } else { (z2.add(txy2d), z2.sub(txy2d)) };
        Completed { X: pp.sub(mm), Y: pp.add(mm), Z: z, T: t }
    }

    /// `self + q`, both in extended coordinates (for building tables).
    fn add(&self, q: &Point) -> Completed {
        let pp = self.Y.add(self.X).mul(q.Y.add(q.X));
        let mm = self.Y.sub(self.X).mul(q.Y.sub(q.X));
        let tt2d = self.T.mul(q.T.mul(Fe::D2));
        let zz = self.Z.mul(q.Z);
        let zz2 = zz.add(zz).carry();
        Completed { X: pp.sub(mm), Y: pp.add(mm), Z: zz2.add(tt2d), T: zz2.sub(tt2d) }
    }

    fn double(&self) -> Completed {
        let xx = self.X.square();
        let yy = self.Y.square();
        let zz = self.Z.square();
        let zz2 = zz.add(zz).carry();
        let x_plus_y_sq = self.X.add(self.Y).square();
        let yy_plus_xx = yy.add(xx);
        let yy_minus_xx = yy.sub(xx);
        Completed {
            X: x_plus_y_sq.sub(yy_plus_xx.carry()),
            Y: yy_plus_xx,
            Z: yy_minus_xx,
            T: zz2.sub(yy_minus_xx.carry()),
        }
    }

    fn doubled(&self, times: u32) -> Point {
        (0..times).fold(*self, |p, _| p.double().point())
    }
}

/// Asks the CPU to bring an entry (120 bytes, up to 3 cache lines) into its caches.
fn prefetch(entry: &Niels) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = std::ptr::from_ref(entry).cast::<i8>();
        let end = start.wrapping_add(std::mem::size_of::<Niels>() - 1);
        for p in [start, start.wrapping_add(64), end] {
            // SAFETY: SSE is part of x86_64's baseline; a prefetch only hints, it never faults
            // nor reads into the program (the address need not even be valid).
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p)
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = entry;
}

/// The most digits a scalar below `2^253` has in radix `2^w` for `w >= 4`.
const MAX_DIGITS: usize = 64;

/// How many signed radix-`2^w` digits a scalar below `2^253` needs, for `4 <= w <= 8`: its
/// windows of `w` bits, and no more, since the top window leaves at least 2 bits spare (256,
/// 255, 258, 259 and 256 bits in all), so it stays below `2^(w-1)` with the carry added.
const fn digit_count(w: u32) -> usize {
    253usize.div_ceil(w as usize)
}

/// The signed radix-`2^w` digits of a reduced scalar, least significant first, each in
/// `[-2^(w-1), 2^(w-1))`: `scalar = sum(digits[i] * 2^(w*i))`.
fn digits(scalar: &Scalar, w: u32) -> [i16; MAX_DIGITS] {
    let bytes = scalar.as_bytes();
    let limbs: [u64; 4] =
        std::array::from_fn(|i| u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|j| bytes[8 * i + j])));
    debug_assert!((4..=8).contains(&w) && digit_count(w) <= MAX_DIGITS);
    let (mask, half, full) = ((1u64 << w) - 1, 1i64 << (w - 1), 1i64 << w);
    let mut out = [0i16; MAX_DIGITS];
    let mut carry = 0i64;
    for (i, digit) in out.iter_mut().enumerate().take(digit_count(w)) {
        let bit = i as u32 * w;
        let window = if bit >= 256 {
            0
        } else {
            let (limb, shift) = ((bit / 64) as usize, bit % 64);
            let mut v = limbs[limb] >> shift;
            if shift + w > 64 && limb + 1 < 4 {
                v |= limbs[limb + 1] << (64 - shift);
            }
            v & mask
        };
        let v = window as i64 + carry;
        carry = (v + half) >> w;
        *digit = (v - carry * full) as i16;
    }
    debug_assert_eq!(carry, 0, "a scalar below 2^253");
    out
}

/// Multiples of one point: row `r` holds `j * 2^(w * step * r) * P` for `j` in `1..=2^(w-1)`.
/// With `step` 1 every digit position has a row; with `step` 2 only the even ones do, and the
/// odd positions are summed first and doubled `w` times.
#[derive(Debug)]
pub(crate) struct Table {
    w: u32,
    step: usize,
    entries: Box<[Niels]>,
}

impl Table {
    /// `step` is 1 or 2 (see the type's docs).
    fn new(p: &Point, w: u32, step: usize) -> Table {
        debug_assert!(step == 1 || step == 2);
        let per_row = 1usize << (w - 1);
        let rows = digit_count(w).div_ceil(step);
        let mut points = Vec::with_capacity(rows * per_row);
        let mut base = *p;
        for _ in 0..rows {
            let mut multiple = base;
            points.push(multiple);
            for _ in 1..per_row {
                multiple = multiple.add(&base).point();
                points.push(multiple);
            }
            // 2^(w*step) * base = 2^(w*step - w + 1) * (2^(w-1) * base).
            base = multiple.doubled(w * step as u32 - w + 1);
        }
        // To affine coordinates with one inversion (Montgomery's trick).
        let mut prefix = Vec::with_capacity(points.len());
        let mut product = Fe::ONE;
        for q in &points {
            prefix.push(product);
            product = product.mul(q.Z);
        }
        let mut inverse = product.invert();
        let mut entries =
            vec![Niels { y_plus_x: Fe::ZERO, y_minus_x: Fe::ZERO, xy2d: Fe::ZERO }; points.len()];
        for (i, q) in points.iter().enumerate().rev() {
            let z_inv = inverse.mul(prefix[i]);
            inverse = inverse.mul(q.Z);
            let (x, y) = (q.X.mul(z_inv), q.Y.mul(z_inv));
            entries[i] =
                Niels { y_plus_x: y.add(x).carry(), y_minus_x: y.sub(x).carry(), xy2d: x.mul(y).mul(Fe::D2) };
        }
        Table { w, step, entries: entries.into_boxed_slice() }
    }

    /// A key's table: radix 16, even positions.
    pub(crate) fn for_key(key: &Point) -> Table {
        Table::new(key, 4, 2)
    }

    /// Its size in bytes.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.entries)
    }

    /// `acc` plus (minus, if `negate`) `digits[i]` times row `i / step`'s point, over the
    /// positions `first, first + step, ...`. Row `r` holds the multiples of `2^(w*step*r) P`, so
    /// with `step` 1 these are the terms of `[scalar]P`; with `step` 2 the even positions give
    /// theirs and the odd ones `2^-w` times theirs (the caller doubles their sum `w` times).
    fn add_digits(&self, mut acc: Point, digits: &[i16], first: usize, negate: bool) -> Point {
        let (per_row, count) = (1usize << (self.w - 1), digit_count(self.w));
        // The entry for position `i` and whether to subtract it, if its digit is not 0.
        let entry = |i: usize| {
            let d = *digits.get(i).filter(|&&d| i < count && d != 0)?;
            Some((&self.entries[i / self.step * per_row + d.unsigned_abs() as usize - 1], d < 0))
        };
        if let Some((e, _)) = entry(first) {
            prefetch(e);
        }
        for i in (first..count).step_by(self.step) {
            // The next entry is fetched from memory while this one is added (an addition takes
            // longer than a cache miss, and a key's table is often cold under load).
            if let Some((next, _)) = entry(i + self.step) {
                prefetch(next);
            }
            if let Some((e, minus)) = entry(i) {
                acc = acc.add_niels(e, minus ^ negate).point();
            }
        }
        acc
    }

    /// `-[k]P`.
    fn minus_multiple(&self, k: &Scalar) -> Point {
        let d = digits(k, self.w);
        if self.step == 1 {
            return self.add_digits(Point::IDENTITY, &d, 0, true);
        }
        let odd = self.add_digits(Point::IDENTITY, &d, 1, true).doubled(self.w);
        self.add_digits(odd, &d, 0, true)
    }
}

/// The basepoint's table, built at its first use (or `None` if the basepoint's encoding did not
/// decode, which the tests rule out).
static BASEPOINT: LazyLock<Option<Table>> = LazyLock::new(|| {
    Point::decompress(ED25519_BASEPOINT_COMPRESSED.as_bytes()).map(|b| Table::new(&b, 8, 1))
});

/// The basepoint's table, building it now if it is not built yet.
pub(crate) fn basepoint_table() -> Option<&'static Table> {
    BASEPOINT.as_ref()
}

/// `compress([s]B - [k]A)`, with `A`'s table from [`Table::for_key`].
pub(crate) fn recompute_r(base: &Table, key: &Table, s: &Scalar, k: &Scalar) -> [u8; 32] {
    let minus_ka = key.minus_multiple(k);
    base.add_digits(minus_ka, &digits(s, base.w), 0, false).compress()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use sha2::{Digest as _, Sha256, Sha512};

    /// Deterministic pseudo-random values: hashes of a counter.
    struct Rng(u64);

    impl Rng {
        fn bytes(&mut self) -> [u8; 32] {
            self.0 += 1;
            Sha256::digest(self.0.to_le_bytes()).into()
        }
    }

    fn rng() -> Rng {
        Rng(25519)
    }

    fn random_scalar(rng: &mut Rng) -> Scalar {
        rng.0 += 1;
        Scalar::from_hash(Sha512::new().chain_update(rng.0.to_le_bytes()))
    }

    fn ours(p: &EdwardsPoint) -> Point {
        Point::decompress(p.compress().as_bytes()).unwrap()
    }

    #[test]
    fn the_constants_are_what_they_claim() {
        let small = |n: u64| Fe(Tight([n, 0, 0, 0, 0]));
        // d * 121666 = -121665.
        assert!(Fe::D.mul(small(121666)).equals(small(121665).neg()));
        assert!(Fe::D2.equals(Fe::D.add(Fe::D).carry()));
        assert!(Fe::SQRT_M1.square().equals(Fe::ONE.neg()));
        // 2^256 - 1 with its top bit dropped is 2^255 - 1 = p + 18, which reduces to 18.
        assert!(Fe::from_bytes(&[0xff; 32]).equals(small(18)));
        let x = Fe::from_bytes(&[7; 32]);
        assert!(x.mul(x.invert()).equals(Fe::ONE));
    }

    #[test]
    fn decoding_and_encoding_agree_with_curve25519_dalek() {
        let mut rng = rng();
        let mut points: Vec<EdwardsPoint> =
            (0..64).map(|_| ED25519_BASEPOINT_POINT * random_scalar(&mut rng)).collect();
        points.extend(EIGHT_TORSION);
        let first = points[0];
        points.extend(EIGHT_TORSION.iter().map(|t| t + first));
        for p in &points {
            let bytes = p.compress().to_bytes();
            assert_eq!(Point::decompress(&bytes).unwrap().compress(), bytes);
        }
        // Random 32-byte strings: about half are no point's encoding; both decoders agree on
        // which, and on the point (non-canonical y included).
        for _ in 0..512 {
            let bytes = rng.bytes();
            let theirs = CompressedEdwardsY(bytes).decompress();
            let ours = Point::decompress(&bytes);
            assert_eq!(ours.is_some(), theirs.is_some(), "{bytes:02x?}");
            if let (Some(a), Some(b)) = (ours, theirs) {
                assert_eq!(a.compress(), b.compress().to_bytes());
            }
        }
        let mut non_canonical = [0xff; 32];
        // y = 2^255 - 18 = p + 1, which reduces to 1: the identity, whose canonical y is 1.
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert_eq!(
            Point::decompress(&non_canonical).map(|p| p.compress()),
            CompressedEdwardsY(non_canonical).decompress().map(|p| p.compress().to_bytes())
        );
    }

    #[test]
    fn digits_recode_the_scalar() {
        let mut rng = rng();
        let l_minus_1 = -Scalar::ONE;
        let mut scalars = vec![Scalar::ZERO, Scalar::ONE, l_minus_1, Scalar::from(u64::MAX)];
        scalars.extend((0..64).map(|_| random_scalar(&mut rng)));
        for w in [4, 8] {
            for s in &scalars {
                let d = digits(s, w);
                let half = 1i16 << (w - 1);
                assert!(d[..digit_count(w)].iter().all(|&x| (-half..half).contains(&x)));
                assert!(d[digit_count(w)..].iter().all(|&x| x == 0));
                let sum = d.iter().rev().fold(Scalar::ZERO, |acc, &x| {
                    let x = if x < 0 { -Scalar::from(x.unsigned_abs()) } else { Scalar::from(x as u16) };
                    acc * Scalar::from(1u64 << w) + x
                });
                assert_eq!(sum, *s, "w {w}");
            }
        }
    }

    #[test]
    fn every_table_layout_multiplies_alike() {
        let mut rng = rng();
        let a = ED25519_BASEPOINT_POINT * random_scalar(&mut rng);
        for (w, step) in [(4, 1), (4, 2), (5, 1), (5, 2), (8, 1), (8, 2)] {
            let table = Table::new(&ours(&a), w, step);
            for k in
                [Scalar::ZERO, Scalar::ONE, -Scalar::ONE, random_scalar(&mut rng), random_scalar(&mut rng)]
            {
                let theirs = (-(a * k)).compress().to_bytes();
                assert_eq!(table.minus_multiple(&k).compress(), theirs, "w {w} step {step}");
            }
        }
    }

    #[test]
    fn recomputing_r_agrees_with_curve25519_dalek() {
        let mut rng = rng();
        let base = basepoint_table().unwrap();
        let mut keys: Vec<EdwardsPoint> =
            (0..4).map(|_| ED25519_BASEPOINT_POINT * random_scalar(&mut rng)).collect();
        // Keys of small and mixed order: the formulas are complete, so they need no special case.
        keys.push(EIGHT_TORSION[0]);
        keys.push(EIGHT_TORSION[3]);
        keys.push(keys[0] + EIGHT_TORSION[5]);
        let edge = [Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(8u8), Scalar::from(1u128 << 127)];
        for a in &keys {
            let table = Table::for_key(&ours(a));
            let mut pairs: Vec<(Scalar, Scalar)> =
                (0..32).map(|_| (random_scalar(&mut rng), random_scalar(&mut rng))).collect();
            pairs.extend(edge.iter().flat_map(|&s| edge.iter().map(move |&k| (s, k))));
            for (s, k) in pairs {
                let theirs = (ED25519_BASEPOINT_POINT * s - a * k).compress().to_bytes();
                assert_eq!(recompute_r(base, &table, &s, &k), theirs);
            }
        }
        assert_eq!(Table::for_key(&ours(&keys[0])).bytes(), 32 * 8 * 120);
        assert_eq!(base.bytes(), 32 * 128 * 120);
    }
}
