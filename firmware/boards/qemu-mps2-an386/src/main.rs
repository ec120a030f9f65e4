//! Warden firmware for QEMU's mps2-an386 (Cortex-M4).
//!
//! Reads the provisioned key from the key page (0x003FF000), opens the reading counter in the
//! emulated flash region (0x003FD000, two 4 KiB sectors), initializes the LIS3DH driver against a
//! simulated LIS3DH, then [`FRAMES`] times: reads [`SAMPLES_PER_READING`] three-axis samples,
//! takes a counter, signs the reading and writes its COBS frame to UART0. Progress and errors go
//! to the host through semihosting; the exit status is 0 after all frames, 1 on any error
//! (including "not provisioned").
#![no_std]
#![no_main]

mod hw;

use core::fmt;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, heprintln, hprintln};
use warden_firmware::counter::{self, CounterStore, RamFlash};
use warden_firmware::lis3dh::{self, ADDRESS_SA0_LOW, Lis3dh};
use warden_firmware::signer::Signer;
use warden_firmware::sim::SimLis3dh;
use warden_firmware::{KeyBlob, KeyBlobError, MAX_FRAME_LEN, ReadingError, reading_from_samples};

/// Frames to send before exiting.
const FRAMES: usize = 5;
/// Three-axis samples per reading.
const SAMPLES_PER_READING: usize = 8;
/// Counters reserved per counter record (one flash record per 8 readings).
const COUNTER_BLOCK: u64 = 8;

enum Error {
    Key(KeyBlobError),
    Counter(counter::Error<counter::OutOfRange>),
    Sensor(lis3dh::Error<embedded_hal::i2c::ErrorKind>),
    Reading(ReadingError),
    Frame(warden_firmware::warden_wire::reading::FrameError),
    Busy,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Key(KeyBlobError::NotProvisioned) => write!(
                f,
                "not provisioned: no key blob at {:#010x} (load one with -device loader,file=ID.keyblob,addr={:#x})",
                hw::KEY_PAGE,
                hw::KEY_PAGE
            ),
            Error::Key(KeyBlobError::Corrupt) => {
                write!(f, "the key blob at {:#010x} is corrupt", hw::KEY_PAGE)
            }
            Error::Counter(e) => write!(f, "counter store: {e:?}"),
            Error::Sensor(e) => write!(f, "LIS3DH: {e:?}"),
            Error::Reading(e) => write!(f, "reading: {e:?}"),
            Error::Frame(e) => write!(f, "frame: {e}"),
            Error::Busy => f.write_str("peripheral already taken"),
        }
    }
}

fn run() -> Result<usize, Error> {
    let blob = KeyBlob::parse(hw::key_page()).map_err(Error::Key)?;
    let signer = Signer::new(&blob);
    hprintln!("warden: device {} key id {:02x?}", signer.device_id(), signer.key_id());

    let region = hw::take_counter_region().ok_or(Error::Busy)?;
    let mut counters =
        CounterStore::open_with_block(RamFlash::new(region, hw::COUNTER_SECTOR), COUNTER_BLOCK)
            .map_err(Error::Counter)?;

    let mut sensor = Lis3dh::new(SimLis3dh::new(ADDRESS_SA0_LOW), ADDRESS_SA0_LOW);
    sensor.init().map_err(Error::Sensor)?;
    let mut uart = hw::Uart0::take().ok_or(Error::Busy)?;

    let mut frame_buf = [0u8; MAX_FRAME_LEN];
    for i in 0..FRAMES {
        let mut samples = [[0i16; 3]; SAMPLES_PER_READING];
        for s in &mut samples {
            *s = sensor.read_accel_mg().map_err(Error::Sensor)?;
        }
        let counter = counters.next().map_err(Error::Counter)?;
        let reading =
            reading_from_samples(signer.device_id(), counter, None, &samples).map_err(Error::Reading)?;
        let signed = signer.sign(reading).map_err(Error::Frame)?;
        let frame = signed.encode_frame(&mut frame_buf).map_err(Error::Frame)?;
        uart.write_all(frame);
        hprintln!("warden: frame {} counter {} ({} bytes)", i, counter, frame.len());
    }
    Ok(FRAMES)
}

#[entry]
fn main() -> ! {
    let status = match run() {
        Ok(n) => {
            hprintln!("warden: sent {} signed frames on UART0", n);
            debug::EXIT_SUCCESS
        }
        Err(e) => {
            heprintln!("warden: error: {}", e);
            debug::EXIT_FAILURE
        }
    };
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    heprintln!("warden: panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
