//! ST LIS3DH three-axis accelerometer over I2C (embedded-hal 1.0), high-resolution mode, ±2 g.
//!
//! Register values follow the ST datasheet (DocID17530 Rev 2, section 8):
//!
//! * `WHO_AM_I` (0x0F) reads `0x33`.
//! * `CTRL_REG1` (0x20) = `0x57`: `ODR[3:0] = 0101` (100 Hz, normal/high-resolution), `LPen = 0`,
//!   `Zen = Yen = Xen = 1`.
//! * `CTRL_REG4` (0x23) = `0x88`: `BDU = 1` (output registers not updated until both bytes of a
//!   sample are read), `BLE = 0` (little-endian), `FS[1:0] = 00` (±2 g), `HR = 1` (high
//!   resolution, 12 bits; with `LPen = 0` this is "high-resolution mode", table 10), self-test
//!   off, SPI 4-wire (unused on I2C).
//! * `OUT_X_L` (0x28) .. `OUT_Z_H` (0x2D): two's complement, left-justified. In high-resolution
//!   mode the sample is 12 bits, so `raw_i16 >> 4`, and at ±2 g the sensitivity is 1 mg/digit
//!   (table 4). Reading several registers in one I2C transaction needs the sub-address MSB set
//!   (auto-increment, section 6.1.1): `0x28 | 0x80 = 0xA8`.
//!
//! The 7-bit address is `0x18` with SA0 (SDO) tied to GND, `0x19` with SA0 high.

use embedded_hal::i2c::I2c;

/// Address with SA0 tied to GND.
pub const ADDRESS_SA0_LOW: u8 = 0x18;
/// Address with SA0 tied to VDD.
pub const ADDRESS_SA0_HIGH: u8 = 0x19;

/// Register addresses and values used by the driver.
pub mod reg {
    /// Device identification register.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Expected `WHO_AM_I` value.
    pub const WHO_AM_I_VALUE: u8 = 0x33;
    /// Data rate, power mode and axis enables.
    pub const CTRL_REG1: u8 = 0x20;
    /// 100 Hz, normal power (LPen = 0), X, Y and Z enabled.
    pub const CTRL_REG1_100HZ_XYZ: u8 = 0x57;
    /// Block data update, endianness, full scale, high resolution.
    pub const CTRL_REG4: u8 = 0x23;
    /// BDU = 1, ±2 g, HR = 1.
    pub const CTRL_REG4_BDU_HR_2G: u8 = 0x88;
    /// First output register (X low byte).
    pub const OUT_X_L: u8 = 0x28;
    /// Sub-address bit asking for auto-increment over a multi-byte access.
    pub const AUTO_INCREMENT: u8 = 0x80;
}

/// A driver error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The I2C bus failed (NACK, arbitration loss, ...).
    Bus(E),
    /// `WHO_AM_I` did not read `0x33`: some other chip (or none) answers at this address.
    WrongDevice(u8),
}

/// The LIS3DH on an I2C bus.
#[derive(Debug)]
pub struct Lis3dh<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Lis3dh<I2C> {
    /// A driver for the chip at 7-bit `address` ([`ADDRESS_SA0_LOW`] or [`ADDRESS_SA0_HIGH`]).
    /// Talks to nothing until [`Lis3dh::init`].
    pub fn new(i2c: I2C, address: u8) -> Self {
        Lis3dh { i2c, address }
    }

    /// Checks `WHO_AM_I`, then configures 100 Hz, all axes, high resolution, ±2 g, BDU.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let mut who = [0u8; 1];
        self.i2c.write_read(self.address, &[reg::WHO_AM_I], &mut who).map_err(Error::Bus)?;
        if who[0] != reg::WHO_AM_I_VALUE {
            return Err(Error::WrongDevice(who[0]));
        }
        self.i2c.write(self.address, &[reg::CTRL_REG1, reg::CTRL_REG1_100HZ_XYZ]).map_err(Error::Bus)?;
        self.i2c.write(self.address, &[reg::CTRL_REG4, reg::CTRL_REG4_BDU_HR_2G]).map_err(Error::Bus)?;
        Ok(())
    }

    /// Reads the latest X, Y, Z sample in milli-g (one 6-byte auto-increment read).
    pub fn read_accel_mg(&mut self) -> Result<[i16; 3], Error<I2C::Error>> {
        let mut raw = [0u8; 6];
        self.i2c
            .write_read(self.address, &[reg::OUT_X_L | reg::AUTO_INCREMENT], &mut raw)
            .map_err(Error::Bus)?;
        Ok([axis_mg(raw[0], raw[1]), axis_mg(raw[2], raw[3]), axis_mg(raw[4], raw[5])])
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

/// A left-justified 12-bit high-resolution sample to milli-g (1 mg/digit at ±2 g).
fn axis_mg(low: u8, high: u8) -> i16 {
    i16::from_le_bytes([low, high]) >> 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    fn init_transactions(addr: u8) -> Vec<Transaction> {
        vec![
            Transaction::write_read(addr, vec![0x0F], vec![0x33]),
            Transaction::write(addr, vec![0x20, 0x57]),
            Transaction::write(addr, vec![0x23, 0x88]),
        ]
    }

    #[test]
    fn init_and_read_issue_the_exact_transactions() {
        let mut expected = init_transactions(0x18);
        // +1000 mg = 0x3E8 -> left-justified 0x3E80; -250 mg = 0xF06 -> 0xF060; 0.
        expected.push(Transaction::write_read(0x18, vec![0xA8], vec![0x80, 0x3E, 0x60, 0xF0, 0x00, 0x00]));
        // Extremes: 0x7FF0 = +2047 mg, 0x8000 = -2048 mg, low nibble ignored (0x001F -> 1).
        expected.push(Transaction::write_read(0x18, vec![0xA8], vec![0xF0, 0x7F, 0x00, 0x80, 0x1F, 0x00]));
        let mut i2c = Mock::new(&expected);
        let mut dev = Lis3dh::new(i2c.clone(), ADDRESS_SA0_LOW);
        dev.init().expect("init");
        assert_eq!(dev.read_accel_mg(), Ok([1000, -250, 0]));
        assert_eq!(dev.read_accel_mg(), Ok([2047, -2048, 1]));
        i2c.done();
    }

    #[test]
    fn wrong_who_am_i_is_refused_before_any_write() {
        let expected = [Transaction::write_read(0x19, vec![0x0F], vec![0x44])];
        let mut i2c = Mock::new(&expected);
        let mut dev = Lis3dh::new(i2c.clone(), ADDRESS_SA0_HIGH);
        assert_eq!(dev.init(), Err(Error::WrongDevice(0x44)));
        i2c.done();
    }

    #[test]
    fn bus_errors_are_returned_not_unwrapped() {
        let expected = [Transaction::write_read(0x18, vec![0x0F], vec![0x33]).with_error(ErrorKind::Other)];
        let mut i2c = Mock::new(&expected);
        let mut dev = Lis3dh::new(i2c.clone(), ADDRESS_SA0_LOW);
        assert_eq!(dev.init(), Err(Error::Bus(ErrorKind::Other)));
        i2c.done();

        let mut expected = init_transactions(0x18);
        expected.push(Transaction::write_read(0x18, vec![0xA8], vec![0; 6]).with_error(ErrorKind::Other));
        let mut i2c = Mock::new(&expected);
        let mut dev = Lis3dh::new(i2c.clone(), ADDRESS_SA0_LOW);
        dev.init().expect("init");
        assert_eq!(dev.read_accel_mg(), Err(Error::Bus(ErrorKind::Other)));
        i2c.done();
    }

    #[test]
    fn driver_reads_the_simulated_chip() {
        let mut dev = Lis3dh::new(crate::sim::SimLis3dh::new(ADDRESS_SA0_LOW), ADDRESS_SA0_LOW);
        dev.init().expect("init");
        let sim = dev.release();
        assert!(sim.configured());
        let mut dev = Lis3dh::new(sim, ADDRESS_SA0_LOW);
        let mut z = Vec::new();
        for _ in 0..64 {
            let [x, y, zz] = dev.read_accel_mg().expect("read");
            assert!((-2048..2048).contains(&x) && (-2048..2048).contains(&y));
            z.push(zz);
        }
        assert!(z.iter().all(|v| (900..1100).contains(v)), "gravity on Z: {z:?}");
        assert!(z.windows(2).any(|w| w[0] != w[1]), "the pattern moves");
        // Not configured yet: the simulated chip answers only at its address.
        let mut other = Lis3dh::new(crate::sim::SimLis3dh::new(ADDRESS_SA0_LOW), ADDRESS_SA0_HIGH);
        assert!(matches!(other.init(), Err(Error::Bus(_))));
    }
}
