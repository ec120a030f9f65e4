//! Warden firmware for the nRF52840-DK.
//!
//! Reads the provisioned key from the key page (0x000FF000), opens the reading counter in the two
//! flash pages before it (0x000FD000, through the NVMC), initializes a real LIS3DH on TWIM0
//! (SDA P0.26, SCL P0.27, address 0x18), then forever: reads [`SAMPLES_PER_READING`] samples at
//! the chip's 100 Hz, takes a counter (persisted first), signs the reading and writes the COBS
//! frame to UARTE0 (TX P0.06, RX P0.08: the DK's USB virtual COM port, 115200 8N1), about once
//! per [`PERIOD_MS`].
//!
//! LED1 (P0.13) lights while running. On a fatal error (not provisioned, no sensor, flash
//! failure) LED1 goes off and LED4 (P0.16) lights; the UART carries only frames, never text.
#![no_std]
#![no_main]

mod hw;

use core::panic::PanicInfo;

use cortex_m_rt::entry;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use nrf52840_hal::gpio::{Floating, Input, Level, Output, Pin, PushPull, p0};
use nrf52840_hal::nvmc::{Nvmc, NvmcError};
use nrf52840_hal::pac::{self, NVMC};
use nrf52840_hal::{Delay, twim, uarte};
use warden_firmware::counter::{CounterStore, Flash};
use warden_firmware::lis3dh::{ADDRESS_SA0_LOW, Lis3dh};
use warden_firmware::signer::Signer;
use warden_firmware::{KeyBlob, MAX_FRAME_LEN, reading_from_samples};

/// Three-axis samples per reading.
const SAMPLES_PER_READING: usize = 8;
/// Time between readings.
const PERIOD_MS: u32 = 1000;
/// Counters reserved per flash record: one page erase per 128 x 256 readings (see
/// `warden_firmware::counter`, "Wear").
const COUNTER_BLOCK: u64 = 256;

/// The counter pages through the NVMC, as a [`Flash`].
struct NvmcFlash(Nvmc<NVMC>);

impl Flash for NvmcFlash {
    type Error = NvmcError;
    fn sector_size(&self) -> u32 {
        hw::PAGE as u32
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), NvmcError> {
        ReadNorFlash::read(&mut self.0, offset, buf)
    }
    fn erase(&mut self, sector: u32) -> Result<(), NvmcError> {
        let from = sector * hw::PAGE as u32;
        NorFlash::erase(&mut self.0, from, from + hw::PAGE as u32)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NvmcError> {
        NorFlash::write(&mut self.0, offset, bytes)
    }
}

/// What went wrong, for a debugger (`probe-rs attach`) to see.
#[derive(Debug)]
enum Fatal {
    NotProvisioned,
    Counter,
    Sensor,
    Uart,
}

/// The peripherals and pins the firmware uses.
struct Board {
    nvmc: NVMC,
    twim0: pac::TWIM0,
    uarte0: pac::UARTE0,
    syst: pac::SYST,
    sda: Pin<Input<Floating>>,
    scl: Pin<Input<Floating>>,
    txd: Pin<Output<PushPull>>,
    rxd: Pin<Input<Floating>>,
}

fn run(board: Board, led1: &mut impl OutputPin) -> Fatal {
    let Ok(blob) = KeyBlob::parse(hw::key_page()) else { return Fatal::NotProvisioned };
    let signer = Signer::new(&blob);
    let Some(pages) = hw::take_counter_pages() else { return Fatal::Counter };
    let Ok(mut counters) =
        CounterStore::open_with_block(NvmcFlash(Nvmc::new(board.nvmc, pages)), COUNTER_BLOCK)
    else {
        return Fatal::Counter;
    };

    let i2c =
        twim::Twim::new(board.twim0, twim::Pins { sda: board.sda, scl: board.scl }, twim::Frequency::K400);
    let mut uart = uarte::Uarte::new(
        board.uarte0,
        uarte::Pins { txd: board.txd, rxd: board.rxd, cts: None, rts: None },
        uarte::Parity::EXCLUDED,
        uarte::Baudrate::BAUD115200,
    );
    let mut delay = Delay::new(board.syst);
    delay.delay_ms(10); // LIS3DH boot time after power-up is 5 ms
    let mut sensor = Lis3dh::new(i2c, ADDRESS_SA0_LOW);
    if sensor.init().is_err() {
        return Fatal::Sensor;
    }
    let _ = led1.set_low();

    let mut frame_buf = [0u8; MAX_FRAME_LEN];
    loop {
        let mut samples = [[0i16; 3]; SAMPLES_PER_READING];
        for s in &mut samples {
            delay.delay_ms(10); // one new sample per 10 ms at 100 Hz
            match sensor.read_accel_mg() {
                Ok(v) => *s = v,
                Err(_) => return Fatal::Sensor,
            }
        }
        let Ok(counter) = counters.next() else { return Fatal::Counter };
        let Ok(reading) = reading_from_samples(signer.device_id(), counter, None, &samples) else {
            return Fatal::Sensor;
        };
        let Ok(signed) = signer.sign(reading) else { return Fatal::Sensor };
        let Ok(frame) = signed.encode_frame(&mut frame_buf) else { return Fatal::Uart };
        if uart.write(frame).is_err() {
            return Fatal::Uart;
        }
        delay.delay_ms(PERIOD_MS.saturating_sub(10 * SAMPLES_PER_READING as u32));
    }
}

#[entry]
fn main() -> ! {
    let (Some(p), Some(core)) = (pac::Peripherals::take(), pac::CorePeripherals::take()) else { halt() };
    let port0 = p0::Parts::new(p.P0);
    // DK LEDs are active low.
    let mut led1 = port0.p0_13.into_push_pull_output(Level::High);
    let mut led4 = port0.p0_16.into_push_pull_output(Level::High);
    let board = Board {
        nvmc: p.NVMC,
        twim0: p.TWIM0,
        uarte0: p.UARTE0,
        syst: core.SYST,
        sda: port0.p0_26.into_floating_input().degrade(),
        scl: port0.p0_27.into_floating_input().degrade(),
        txd: port0.p0_06.into_push_pull_output(Level::High).degrade(),
        rxd: port0.p0_08.into_floating_input().degrade(),
    };
    // Kept in a variable a debugger can read.
    let fatal = run(board, &mut led1);
    let _ = led1.set_high();
    let _ = led4.set_low();
    let _ = core::hint::black_box(fatal);
    halt()
}

fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    halt()
}
