//! A simulated LIS3DH: an embedded-hal 1.0 [`I2c`] that models the chip's registers.
//!
//! Boards without the chip (the QEMU machine, host tests) run the real [`crate::lis3dh`] driver
//! against it. It answers only at its own address (anything else is a NACK), honours the
//! sub-address auto-increment bit, keeps `WHO_AM_I` read-only, and produces a deterministic
//! motion pattern: gravity on Z plus slow triangle waves on X and Y and a short "tap" on X every
//! 37 samples. A new sample is latched each time a read starts at `OUT_X_L`. Until `CTRL_REG1`
//! enables the axes the outputs read zero; `CTRL_REG4.HR` selects 12-bit (1 mg/digit) or 10-bit
//! (4 mg/digit) left-justified output, as on the chip.

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::lis3dh::reg;

/// The simulated chip.
#[derive(Clone, Debug)]
pub struct SimLis3dh {
    address: u8,
    regs: [u8; 0x40],
    step: u32,
}

fn triangle(t: u32, period: u32, amplitude: i32) -> i32 {
    let p = (t % period) as i32;
    let half = (period / 2) as i32;
    let up = if p < half { p } else { 2 * half - p };
    amplitude * (2 * up - half) / half.max(1)
}

impl SimLis3dh {
    /// A powered-up chip (registers at their reset values) at 7-bit `address`.
    pub fn new(address: u8) -> Self {
        let mut regs = [0u8; 0x40];
        regs[reg::WHO_AM_I as usize] = reg::WHO_AM_I_VALUE;
        regs[reg::CTRL_REG1 as usize] = 0x07; // reset value: power-down, axes enabled
        SimLis3dh { address, regs, step: 0 }
    }

    /// Whether the driver configured 100 Hz, XYZ, BDU, high resolution, ±2 g.
    pub fn configured(&self) -> bool {
        self.regs[reg::CTRL_REG1 as usize] == reg::CTRL_REG1_100HZ_XYZ
            && self.regs[reg::CTRL_REG4 as usize] == reg::CTRL_REG4_BDU_HR_2G
    }

    /// The motion in milli-g at sample `t`.
    pub fn motion_mg(t: u32) -> [i32; 3] {
        let tap = if t % 37 < 2 { 600 } else { 0 };
        [triangle(t, 50, 300) + tap, triangle(t + 7, 20, 150), 1000 + triangle(t, 64, 40)]
    }

    fn latch(&mut self) {
        let ctrl1 = self.regs[reg::CTRL_REG1 as usize];
        let powered = ctrl1 >> 4 != 0;
        let hr = self.regs[reg::CTRL_REG4 as usize] & 0x08 != 0;
        let mg = Self::motion_mg(self.step);
        self.step = self.step.wrapping_add(1);
        for (axis, value) in mg.into_iter().enumerate() {
            let enabled = powered && ctrl1 & (1 << axis) != 0;
            let raw: i16 = match (enabled, hr) {
                (false, _) => 0,
                (true, true) => (value.clamp(-2048, 2047) as i16) << 4,
                (true, false) => ((value / 4).clamp(-512, 511) as i16) << 6,
            };
            let [lo, hi] = raw.to_le_bytes();
            self.regs[reg::OUT_X_L as usize + 2 * axis] = lo;
            self.regs[reg::OUT_X_L as usize + 2 * axis + 1] = hi;
        }
    }
}

impl ErrorType for SimLis3dh {
    type Error = ErrorKind;
}

impl I2c for SimLis3dh {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
        if address != self.address {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        let mut pointer: Option<(u8, bool)> = None;
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    let Some((&sub, data)) = bytes.split_first() else { continue };
                    let (mut at, inc) = (sub & 0x7F, sub & reg::AUTO_INCREMENT != 0);
                    for &b in data {
                        let r = self
                            .regs
                            .get_mut(at as usize)
                            .ok_or(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data))?;
                        if at != reg::WHO_AM_I && !(0x28..=0x2D).contains(&at) {
                            *r = b;
                        }
                        if inc {
                            at += 1;
                        }
                    }
                    pointer = Some((at, inc));
                }
                Operation::Read(buf) => {
                    let (mut at, inc) = pointer.ok_or(ErrorKind::Other)?;
                    if at == reg::OUT_X_L {
                        self.latch();
                    }
                    for b in buf.iter_mut() {
                        *b = *self.regs.get(at as usize).ok_or(ErrorKind::Other)?;
                        if inc {
                            at += 1;
                        }
                    }
                    pointer = Some((at, inc));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn motion_is_deterministic_and_in_range() {
        for t in 0..500 {
            let [x, y, z] = SimLis3dh::motion_mg(t);
            assert!((-2048..2048).contains(&x) && (-2048..2048).contains(&y) && (900..1100).contains(&z));
            assert_eq!(SimLis3dh::motion_mg(t), [x, y, z]);
        }
    }

    #[test]
    fn who_am_i_is_read_only_and_auto_increment_walks_registers() {
        let mut sim = SimLis3dh::new(0x18);
        sim.write(0x18, &[reg::WHO_AM_I, 0x00]).expect("write");
        let mut who = [0];
        sim.write_read(0x18, &[reg::WHO_AM_I], &mut who).expect("read");
        assert_eq!(who, [0x33]);
        sim.write(0x18, &[reg::CTRL_REG1 | 0x80, 0x57, 0x00, 0x00, 0x88]).expect("write");
        assert!(sim.configured());
        // Without auto-increment a 2-byte read repeats the same register.
        let mut two = [0; 2];
        sim.write_read(0x18, &[reg::WHO_AM_I], &mut two).expect("read");
        assert_eq!(two, [0x33, 0x33]);
    }
}
