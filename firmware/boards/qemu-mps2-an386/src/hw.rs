//! The only module with `unsafe`: fixed memory regions and the CMSDK UART0 registers of the
//! mps2-an386 machine (QEMU `hw/arm/mps2.c`, `hw/char/cmsdk-apb-uart.c`; ARM AN386).
#![allow(unsafe_code)] // this module only; the crate denies it everywhere else

use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

/// Start of the key page: the 81-byte `KeyBlob` (see `memory.x`).
pub const KEY_PAGE: usize = 0x003F_F000;
/// Size of the key page.
pub const KEY_PAGE_LEN: usize = 0x1000;
/// Start of the counter region: two 4 KiB sectors (see `memory.x`).
pub const COUNTER_REGION: usize = 0x003F_D000;
/// Sector size of the emulated counter flash.
pub const COUNTER_SECTOR: u32 = 0x1000;

/// The key page, read-only.
pub fn key_page() -> &'static [u8] {
    // SAFETY: 0x003FF000..0x00400000 is mapped memory on mps2-an386 (SSRAM1, 4 MiB at 0), aligned
    // and in bounds; memory.x keeps it out of the image, so nothing else the linker places aliases
    // it, and this firmware never writes it (QEMU's loader fills it before reset).
    unsafe { core::slice::from_raw_parts(KEY_PAGE as *const u8, KEY_PAGE_LEN) }
}

static COUNTER_TAKEN: AtomicBool = AtomicBool::new(false);

/// The counter region, at most once (later calls return `None`).
pub fn take_counter_region() -> Option<&'static mut [u8]> {
    if COUNTER_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: 0x003FD000..0x003FF000 is mapped, writable SSRAM1 on mps2-an386, outside every
    // region memory.x gives the linker; the flag above makes this the only reference ever made.
    Some(unsafe { core::slice::from_raw_parts_mut(COUNTER_REGION as *mut u8, 2 * COUNTER_SECTOR as usize) })
}

const UART0: usize = 0x4000_4000;
const DATA: usize = UART0;
const STATE: usize = UART0 + 0x4;
const CTRL: usize = UART0 + 0x8;
const BAUDDIV: usize = UART0 + 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_ENABLE: u32 = 1 << 0;

/// CMSDK APB UART0 (transmit only); QEMU's first `-serial` is connected to it.
#[derive(Debug)]
pub struct Uart0 {
    _private: (),
}

static UART_TAKEN: AtomicBool = AtomicBool::new(false);

impl Uart0 {
    /// Configures 115200 baud at the 25 MHz APB clock and enables the transmitter, at most once.
    pub fn take() -> Option<Uart0> {
        if UART_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: BAUDDIV and CTRL are 32-bit registers of the CMSDK UART at 0x40004000 on
        // mps2-an386; volatile, aligned accesses; the flag above makes this the only owner.
        unsafe {
            ptr::write_volatile(BAUDDIV as *mut u32, 25_000_000 / 115_200);
            ptr::write_volatile(CTRL as *mut u32, CTRL_TX_ENABLE);
        }
        Some(Uart0 { _private: () })
    }

    /// Sends bytes, waiting while the transmit buffer is full.
    pub fn write_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: STATE and DATA are 32-bit registers of the UART this value owns (see `take`).
            unsafe {
                while ptr::read_volatile(STATE as *const u32) & STATE_TX_FULL != 0 {}
                ptr::write_volatile(DATA as *mut u32, u32::from(b));
            }
        }
    }
}
