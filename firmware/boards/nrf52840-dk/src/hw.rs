//! The only module with `unsafe`: the fixed flash pages (see `memory.x`).
#![allow(unsafe_code)] // this module only; the crate denies it everywhere else

use core::sync::atomic::{AtomicBool, Ordering};

/// Start of the key page: the 81-byte `KeyBlob`.
pub const KEY_PAGE: usize = 0x000F_F000;
/// Flash page size.
pub const PAGE: usize = 0x1000;
/// Start of the two counter pages.
pub const COUNTER_PAGES: usize = 0x000F_D000;

/// The key page, read-only.
pub fn key_page() -> &'static [u8] {
    // SAFETY: 0xFF000..0x100000 is the last page of the nRF52840's 1 MiB flash: mapped, readable,
    // aligned; memory.x keeps it out of the image and nothing in this firmware writes it.
    unsafe { core::slice::from_raw_parts(KEY_PAGE as *const u8, PAGE) }
}

static COUNTER_TAKEN: AtomicBool = AtomicBool::new(false);

/// The two counter pages, at most once, for the NVMC driver (which erases and programs them
/// through the NVMC; plain stores would not change flash).
pub fn take_counter_pages() -> Option<&'static mut [u8]> {
    if COUNTER_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: 0xFD000..0xFF000 are two page-aligned flash pages, outside every region memory.x
    // gives the linker; the flag above makes this the only reference ever made to them.
    Some(unsafe { core::slice::from_raw_parts_mut(COUNTER_PAGES as *mut u8, 2 * PAGE) })
}
