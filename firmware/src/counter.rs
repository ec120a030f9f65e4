//! The reading counter: strictly increasing, never handed out twice, even across power loss.
//!
//! The host refuses a reading whose counter is not above the last one it accepted from that
//! device, so a board that reused a counter after a brown-out would lock itself out (or, worse,
//! let a recorded reading be replayed). [`CounterStore`] therefore persists before it hands out.
//!
//! # Layout
//!
//! The store owns two erase sectors of a NOR [`Flash`] region, A (sector 0, offset 0) and B
//! (sector 1, offset `sector_size`). Each sector is an append-only log of 32-byte records at
//! 32-byte aligned offsets:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `WCT1` |
//! | 4 | 4 | zero (reserved) |
//! | 8 | 8 | sequence number, u64 little-endian, +1 per record |
//! | 16 | 8 | reservation limit, u64 little-endian: every counter below it may have been handed out |
//! | 24 | 8 | first 8 bytes of SHA-256 of bytes 0..24 |
//!
//! A slot whose 32 bytes are all `0xFF` is free; any other slot is used, valid or not.
//!
//! # Algorithm
//!
//! * [`CounterStore::open`] scans both sectors and takes the valid record (magic and checksum
//!   correct) with the highest sequence number. Counting resumes at its limit. The active sector
//!   is the one holding that record; new records go after the last used slot in it, so a torn
//!   (half-written) slot is never written again.
//! * [`CounterStore::next`] hands out counters from the reserved block `next..limit`. When the
//!   block is used up it first writes a record with `limit + block` (write-ahead) and only then
//!   returns a counter. Reserving `block` counters per record divides flash wear by `block`; the
//!   price is that a reboot skips the unused rest of the block (gaps are fine: counters only
//!   have to increase).
//! * When the active sector is full, the other sector is erased and the new record goes to its
//!   first slot. The sector holding the newest valid record is never erased.
//!
//! # Power loss
//!
//! Cut power at any byte: during an append the new slot is torn (bad checksum) or complete, and
//! the previous record is untouched, so `open` finds the old or the new limit; during the erase
//! of the other sector the newest record is in the active sector, untouched. Either way the
//! recovered limit is at least every counter handed out, because a counter is handed out only
//! after the record reserving it was completely written. The unit tests cut power after every
//! byte of every write and erase over many cycles, including sector switches.
//!
//! Writes are whole 32-byte records at 32-byte aligned offsets, each location is written at most
//! once between erases, so any NOR flash with a write unit of 1 to 32 bytes works (nRF52840: 4).
//!
//! After a flash error the store refuses to hand out counters ([`Error::NeedsReopen`]) until it
//! is opened again, which rescans the flash.
//!
//! # Wear
//!
//! One erase per `sector_size / 32` records per sector. With 4 KiB sectors (128 records), a block
//! of 256 and 10 000 erase cycles per page (nRF52840): 2 x 10 000 x 128 x 256 = 655 million
//! counters.

use sha2::{Digest, Sha256};

/// Bytes per record.
pub const RECORD_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"WCT1";
/// Counters reserved per record by [`CounterStore::open`].
pub const DEFAULT_BLOCK: u64 = 64;
/// The first counter a blank store hands out.
pub const FIRST_COUNTER: u64 = 1;

/// A NOR flash region: erase sets a whole sector to `0xFF`, writes can only clear bits.
///
/// Offsets are relative to the start of the region given to the [`CounterStore`], which uses
/// sectors 0 and 1.
pub trait Flash {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Bytes per erase sector; a multiple of [`RECORD_LEN`].
    fn sector_size(&self) -> u32;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Erases sector `sector` (bytes `sector * sector_size ..`) to `0xFF`.
    fn erase(&mut self, sector: u32) -> Result<(), Self::Error>;
    /// Programs `bytes` at `offset` (the store only writes erased locations).
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Why the store could not hand out a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The flash driver failed.
    Flash(E),
    /// A previous flash error left the store's view of the flash uncertain; open it again.
    NeedsReopen,
    /// The counter would overflow `u64`.
    Exhausted,
    /// The sector size is not a non-zero multiple of [`RECORD_LEN`].
    BadGeometry,
}

/// A power-loss-safe, strictly increasing counter in two sectors of a [`Flash`].
#[derive(Clone, Debug)]
pub struct CounterStore<F> {
    flash: F,
    slots: u32,
    block: u64,
    /// Sector holding the newest valid record (or the one to leave when there is none).
    active: u32,
    /// First slot after the last used slot of `active`; `slots` when full.
    next_free: u32,
    sequence: u64,
    limit: u64,
    next: u64,
    poisoned: bool,
}

fn encode(sequence: u64, limit: u64) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..4].copy_from_slice(MAGIC);
    r[8..16].copy_from_slice(&sequence.to_le_bytes());
    r[16..24].copy_from_slice(&limit.to_le_bytes());
    let sum = Sha256::digest(&r[..24]);
    r[24..].copy_from_slice(&sum[..8]);
    r
}

/// `(sequence, limit)` of a valid record.
fn decode(r: &[u8; RECORD_LEN]) -> Option<(u64, u64)> {
    if &r[..4] != MAGIC || r[4..8] != [0; 4] || Sha256::digest(&r[..24])[..8] != r[24..] {
        return None;
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&r[8..16]);
    let sequence = u64::from_le_bytes(word);
    word.copy_from_slice(&r[16..24]);
    Some((sequence, u64::from_le_bytes(word)))
}

impl<F: Flash> CounterStore<F> {
    /// Opens the store, reserving [`DEFAULT_BLOCK`] counters per record.
    pub fn open(flash: F) -> Result<Self, Error<F::Error>> {
        Self::open_with_block(flash, DEFAULT_BLOCK)
    }

    /// Opens the store, reserving `block` (at least 1) counters per record.
    pub fn open_with_block(mut flash: F, block: u64) -> Result<Self, Error<F::Error>> {
        let sector_size = flash.sector_size();
        if sector_size == 0 || !sector_size.is_multiple_of(RECORD_LEN as u32) {
            return Err(Error::BadGeometry);
        }
        let slots = sector_size / RECORD_LEN as u32;
        let mut best: Option<(u64, u64, u32)> = None;
        let mut next_free = [0u32; 2];
        let mut record = [0u8; RECORD_LEN];
        for sector in 0..2 {
            for slot in 0..slots {
                flash
                    .read(sector * sector_size + slot * RECORD_LEN as u32, &mut record)
                    .map_err(Error::Flash)?;
                if record.iter().all(|b| *b == 0xFF) {
                    continue;
                }
                next_free[sector as usize] = slot + 1;
                if let Some((sequence, limit)) = decode(&record)
                    && best.is_none_or(|(s, _, _)| sequence > s)
                {
                    best = Some((sequence, limit, sector));
                }
            }
        }
        let (sequence, limit, active, free) = match best {
            Some((sequence, limit, sector)) => (sequence, limit, sector, next_free[sector as usize]),
            // Nothing valid: start in sector 0 if it is blank, else make the first record erase it.
            None if next_free[0] == 0 => (0, FIRST_COUNTER, 0, 0),
            None => (0, FIRST_COUNTER, 1, slots),
        };
        Ok(CounterStore {
            flash,
            slots,
            block: block.max(1),
            active,
            next_free: free,
            sequence,
            limit,
            next: limit,
            poisoned: false,
        })
    }

    /// Hands out the next counter, persisting a new reservation first when the block is used up.
    #[allow(clippy::should_implement_trait)] // fallible, and not an iterator: the name says what it does
    pub fn next(&mut self) -> Result<u64, Error<F::Error>> {
        if self.poisoned {
            return Err(Error::NeedsReopen);
        }
        if self.next >= self.limit {
            let limit = self.next.checked_add(self.block).ok_or(Error::Exhausted)?;
            self.persist(limit)?;
        }
        let counter = self.next;
        self.next += 1;
        Ok(counter)
    }

    /// Makes sure every later counter is at least `min`, before and after a reboot (e.g. to
    /// continue a device's sequence on new flash: the next counter is then exactly `min`).
    pub fn ensure_at_least(&mut self, min: u64) -> Result<(), Error<F::Error>> {
        if self.poisoned {
            return Err(Error::NeedsReopen);
        }
        if min > self.next {
            if min > self.limit {
                // Raise the persisted floor to exactly `min`: after a reboot counting resumes
                // there; the next `next()` reserves a block as usual.
                self.persist(min)?;
            }
            self.next = min;
        }
        Ok(())
    }

    /// The counter [`CounterStore::next`] would hand out now.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// The persisted reservation limit: no counter at or above it has been handed out.
    pub fn reserved_until(&self) -> u64 {
        self.limit
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn persist(&mut self, limit: u64) -> Result<(), Error<F::Error>> {
        let sequence = self.sequence.checked_add(1).ok_or(Error::Exhausted)?;
        let sector_size = self.slots * RECORD_LEN as u32;
        let (sector, slot) =
            if self.next_free >= self.slots { (1 - self.active, 0) } else { (self.active, self.next_free) };
        // Any failure from here on leaves the flash in a state only a rescan knows.
        self.poisoned = true;
        if sector != self.active {
            self.flash.erase(sector).map_err(Error::Flash)?;
        }
        self.flash
            .write(sector * sector_size + slot * RECORD_LEN as u32, &encode(sequence, limit))
            .map_err(Error::Flash)?;
        self.poisoned = false;
        self.active = sector;
        self.next_free = slot + 1;
        self.sequence = sequence;
        self.limit = limit;
        Ok(())
    }
}

/// A [`Flash`] emulated in RAM with NOR semantics (erase sets `0xFF`, writes AND bits in).
///
/// The QEMU board keeps its counter here; host tools use it to build counter images.
#[derive(Debug)]
pub struct RamFlash<'a> {
    mem: &'a mut [u8],
    sector_size: u32,
}

/// An access outside the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

impl<'a> RamFlash<'a> {
    /// Wraps `mem` (at least two sectors) as flash with `sector_size`-byte sectors.
    pub fn new(mem: &'a mut [u8], sector_size: u32) -> Self {
        RamFlash { mem, sector_size }
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(OutOfRange)?;
        if end > self.mem.len() { Err(OutOfRange) } else { Ok(start..end) }
    }
}

impl Flash for RamFlash<'_> {
    type Error = OutOfRange;
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }
    fn erase(&mut self, sector: u32) -> Result<(), OutOfRange> {
        let start = sector.checked_mul(self.sector_size).ok_or(OutOfRange)?;
        let r = self.range(start, self.sector_size as usize)?;
        self.mem[r].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(offset, bytes.len())?;
        for (m, b) in self.mem[r].iter_mut().zip(bytes) {
            *m &= *b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NOR flash that loses power after a budget of bytes (each byte written or erased costs
    /// one), and refuses to program a location twice between erases.
    #[derive(Clone, Debug)]
    struct CutFlash {
        mem: Vec<u8>,
        sector: u32,
        budget: Option<usize>,
        bytes_done: usize,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct PowerCut;

    impl CutFlash {
        fn blank(sector: u32) -> Self {
            CutFlash { mem: vec![0xFF; 2 * sector as usize], sector, budget: None, bytes_done: 0 }
        }
        fn spend(&mut self) -> Result<(), PowerCut> {
            match &mut self.budget {
                Some(0) => Err(PowerCut),
                Some(n) => {
                    *n -= 1;
                    self.bytes_done += 1;
                    Ok(())
                }
                None => {
                    self.bytes_done += 1;
                    Ok(())
                }
            }
        }
    }

    impl Flash for CutFlash {
        type Error = PowerCut;
        fn sector_size(&self) -> u32 {
            self.sector
        }
        fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), PowerCut> {
            if self.budget == Some(0) {
                return Err(PowerCut);
            }
            buf.copy_from_slice(&self.mem[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn erase(&mut self, sector: u32) -> Result<(), PowerCut> {
            let start = (sector * self.sector) as usize;
            for i in start..start + self.sector as usize {
                self.spend()?;
                self.mem[i] = 0xFF;
            }
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
            assert_eq!(offset as usize % RECORD_LEN, 0, "unaligned write");
            for (i, b) in bytes.iter().enumerate() {
                let at = offset as usize + i;
                assert_eq!(self.mem[at], 0xFF, "programming byte {at} twice without an erase");
                self.spend()?;
                self.mem[at] &= *b;
            }
            Ok(())
        }
    }

    fn reboot(store: CounterStore<CutFlash>, block: u64) -> CounterStore<CutFlash> {
        let mut flash = store.into_flash();
        flash.budget = None;
        CounterStore::open_with_block(flash, block).expect("reopen")
    }

    /// Over a run long enough to switch sectors several times, cut power after every byte of
    /// every flash operation of every `next()`, reboot, and check what comes back.
    #[test]
    fn survives_power_loss_at_every_byte() {
        for block in [1, 3] {
            // 4 records per sector: a sector switch every 4 reservations.
            let mut store = CounterStore::open_with_block(CutFlash::blank(128), block).expect("open");
            let mut handed: Vec<u64> = Vec::new();
            let mut cuts = 0;
            for _ in 0..40 {
                let mut probe = store.clone();
                probe.flash.bytes_done = 0;
                let full = probe.next().expect("uncut next");
                let total = probe.flash.bytes_done;
                let (old_limit, new_limit) = (store.reserved_until(), probe.reserved_until());
                for k in 0..total {
                    let mut cut = store.clone();
                    cut.flash.budget = Some(k);
                    assert!(
                        cut.next().is_err(),
                        "block {block}: next() finished within {k} of {total} bytes"
                    );
                    assert_eq!(cut.next(), Err(Error::NeedsReopen));
                    let mut again = reboot(cut, block);
                    let limit = again.reserved_until();
                    assert!(
                        limit == old_limit || limit == new_limit,
                        "recovered {limit}, not {old_limit} or {new_limit}"
                    );
                    let c = again.next().expect("next after reboot");
                    assert!(handed.iter().all(|h| c > *h), "block {block}, cut at {k}/{total}: {c} reused");
                    cuts += 1;
                }
                let c = store.next().expect("next");
                assert_eq!(c, full);
                assert!(handed.last().is_none_or(|h| c > *h));
                handed.push(c);
                // A clean reboot never goes back either.
                let c2 = reboot(store.clone(), block).next().expect("next");
                assert!(c2 > c);
            }
            assert!(cuts > 500, "only {cuts} cuts exercised");
        }
    }

    /// Power cuts accumulate: keep going on the rebooted store, cutting at pseudo-random bytes,
    /// so torn slots and half-erased sectors stay on the flash for later scans.
    #[test]
    fn survives_repeated_power_loss() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let block = 2;
        let mut store = CounterStore::open_with_block(CutFlash::blank(96), block).expect("open");
        let mut highest = 0;
        for _ in 0..2000 {
            if rand() % 3 == 0 {
                store.flash.budget = Some((rand() % 140) as usize);
                match store.next() {
                    Ok(c) => {
                        assert!(c > highest);
                        highest = c;
                    }
                    Err(Error::Flash(PowerCut)) => {}
                    Err(e) => panic!("{e:?}"),
                }
                store = reboot(store, block);
            } else {
                let c = store.next().expect("next");
                assert!(c > highest, "{c} after {highest}");
                highest = c;
            }
        }
    }

    #[test]
    fn blank_and_garbage_flash_start_at_the_first_counter() {
        let mut store = CounterStore::open(CutFlash::blank(256)).expect("open");
        assert_eq!(store.next(), Ok(FIRST_COUNTER));
        assert_eq!(store.next(), Ok(FIRST_COUNTER + 1));
        // Zero-filled memory (QEMU RAM, never erased): no valid record, still works, and the
        // garbage sector is erased before the first record goes in.
        let mut flash = CutFlash::blank(256);
        flash.mem.fill(0);
        let mut store = CounterStore::open_with_block(flash, 1).expect("open");
        assert_eq!(store.next(), Ok(FIRST_COUNTER));
        let mut store = reboot(store, 1);
        assert_eq!(store.next(), Ok(FIRST_COUNTER + 1));
    }

    #[test]
    fn ensure_at_least_persists_and_ram_flash_round_trips() {
        let mut mem = vec![0u8; 2 * 4096];
        {
            let mut store = CounterStore::open(RamFlash::new(&mut mem, 4096)).expect("open");
            store.ensure_at_least(1000).expect("ensure");
            assert_eq!(store.peek(), 1000);
        }
        let mut store = CounterStore::open(RamFlash::new(&mut mem, 4096)).expect("open");
        assert_eq!(store.next(), Ok(1000));
        assert_eq!(store.next(), Ok(1001));
        store.ensure_at_least(500).expect("lower is a no-op");
        assert_eq!(store.next(), Ok(1002));
        assert_eq!(
            CounterStore::open(RamFlash::new(&mut [0u8; 64], 48)).map(|_| ()),
            Err(Error::BadGeometry)
        );
    }
}
