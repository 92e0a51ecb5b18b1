//! A simulated NOR medium that knows the rules of the real one and breaks them on purpose.
//!
//! [`SimStorage`] implements [`Storage`] with three regions. Each region keeps a *live* image
//! (what reads return now) and a *durable* image (what survives a power cut), plus the list of
//! writes and erases made since the last sync. It enforces NOR rules: writes are whole aligned
//! words and program bits only away from the erased value, and a word written twice between
//! erases is recorded as a violation by the core. It counts every operation.
//!
//! A power cut is scheduled with [`SimStorage::cut_power_after`]: the chosen operation is
//! interrupted and every later one fails with [`StorageErrorKind::PowerLoss`]. [`SimStorage::reboot`]
//! then builds the image the medium would hold: the durable image plus an arbitrary subset of
//! the unsynced operations, the interrupted write torn at word granularity (a prefix, a random
//! subset of words, or random bits of a word), the interrupted erase leaving blocks erased,
//! untouched or full of garbage.
//!
//! ```
//! use sluicegate_core::{Channel, Config, Error, StorageErrorKind, StorageError};
//! use sluicegate_sim::{CrashPolicy, SimStorage};
//!
//! const CONFIG: Config = Config::new(32, 8, 2, 64, 1024);
//! let mut sim: SimStorage<4, 512> = SimStorage::new(16 * 1024, 0xFF);
//! let mut memory = vec![0u64; CONFIG.memory_words()];
//!
//! let mut channel = Channel::open(&mut sim, &mut memory[..], CONFIG).unwrap();
//! let tx = channel.begin().unwrap();
//! channel.put(tx, b"acknowledged").unwrap();
//! channel.commit(tx).unwrap();
//! let tx = channel.begin().unwrap();
//! channel.put(tx, b"in flight").unwrap();
//! drop(channel);
//!
//! // Power fails before the second transaction commits; anything unsynced may survive or not.
//! sim.reboot(7, CrashPolicy::Random);
//! let mut channel = Channel::open(&mut sim, &mut memory[..], CONFIG).unwrap();
//! let tx = channel.begin().unwrap();
//! let mut buf = [0u8; 64];
//! let n = channel.take(tx, &mut buf).unwrap().unwrap();
//! assert_eq!(&buf[..n], b"acknowledged");
//! assert_eq!(channel.take(tx, &mut buf).unwrap(), None);
//! ```

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sluicegate_core::{ErrorType, Region, SplitSync, Storage, StorageError, StorageErrorKind};

/// An error from the simulated medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    /// The kind the core sees.
    pub kind: StorageErrorKind,
    /// What happened, for test output.
    pub what: &'static str,
}

impl StorageError for SimError {
    fn kind(&self) -> StorageErrorKind {
        self.kind
    }
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.what)
    }
}

impl std::error::Error for SimError {}

/// Operation counters, to pin the cost of each channel operation in tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// `read` calls.
    pub reads: u64,
    /// `write` calls.
    pub writes: u64,
    /// `erase` calls.
    pub erases: u64,
    /// `sync` calls.
    pub syncs: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes erased.
    pub bytes_erased: u64,
}

impl Counters {
    /// Writes, erases and syncs: the operations a power cut can interrupt.
    pub fn mutations(&self) -> u64 {
        self.writes + self.erases + self.syncs
    }
}

/// Which operation an injected I/O error hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `erase`.
    Erase,
    /// `sync`.
    Sync,
}

/// Counts one mutation against a scheduled cut (`None`: none scheduled); true, and the schedule
/// cleared, if the power fails during this one. Shared by [`SimStorage`] and
/// [`crate::nor::SimNor`].
pub(crate) fn count_down(cut_in: &mut Option<u64>) -> bool {
    match *cut_in {
        Some(0) => {
            *cut_in = None;
            true
        }
        Some(n) => {
            *cut_in = Some(n - 1);
            false
        }
        None => false,
    }
}

/// What happens to unsynced operations at a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Each unsynced operation independently survives, is lost, or is torn.
    Random,
    /// Only what was synced survives (plus the interrupted operation, torn).
    LoseUnsynced,
    /// Every unsynced operation survives whole (the interrupted one is still torn).
    KeepUnsynced,
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: usize, data: Vec<u8> },
    Erase { from: usize, to: usize },
}

#[derive(Debug, Clone)]
struct Image {
    bytes: Vec<u8>,
    /// Per word: programmed since its block was last erased.
    programmed: Vec<bool>,
}

#[derive(Debug, Clone)]
struct SimRegion {
    live: Image,
    durable: Image,
    pending: Vec<Op>,
}

/// A simulated NOR medium with write unit `WRITE` and erase unit `ERASE` bytes.
#[derive(Debug, Clone)]
pub struct SimStorage<const WRITE: usize = 4, const ERASE: usize = 4096> {
    regions: [SimRegion; 3],
    erased: u8,
    counters: Counters,
    /// Mutations left before the power fails, if a cut is scheduled.
    cut_in: Option<u64>,
    /// The operation the power cut interrupted: (region index, index in `pending`).
    interrupted: Option<(usize, usize)>,
    powered: bool,
    fail: Option<(OpKind, u64, StorageErrorKind)>,
    violations: Vec<String>,
    /// What [`Storage::whole_records`] answers (see [`SimStorage::set_whole_records`]).
    whole_records: bool,
    /// Every [`Storage::prepare`] call: the region and range it named.
    prepared: Vec<(Region, u64, u64)>,
    /// What [`Storage::rewritable`] answers: the medium behaves as a file (see
    /// [`SimStorage::set_rewritable`]).
    rewritable: bool,
    /// Every [`Storage::release`] call: the region and range it named.
    released: Vec<(Region, u64, u64)>,
    /// Salts handed out so far ([`Storage::salt`]); each is a hash of the count, so a run is
    /// repeatable.
    salts: u64,
    /// A salt given instead (see [`SimStorage::fix_salt`]).
    fixed_salt: Option<u32>,
}

fn region_index(r: Region) -> usize {
    match r {
        Region::Log => 0,
        Region::Checkpoint => 1,
        Region::Backup => 2,
    }
}

impl<const WRITE: usize, const ERASE: usize> SimStorage<WRITE, ERASE> {
    /// A blank medium with a log region of `log_bytes` and no checkpoint regions (so the
    /// channel on it recovers by full replay). `erased` is the value an erase leaves: `0xFF`
    /// (programming clears bits, as on NOR flash) or `0x00` (programming sets bits).
    pub fn new(log_bytes: usize, erased: u8) -> Self {
        Self::with_regions([log_bytes, 0, 0], erased)
    }

    /// A blank medium with a log region of `log_bytes` and checkpoint and backup regions of
    /// `slot_bytes` each.
    pub fn with_checkpoints(log_bytes: usize, slot_bytes: usize, erased: u8) -> Self {
        Self::with_regions([log_bytes, slot_bytes, slot_bytes], erased)
    }

    /// A blank medium with the given sizes for the log, checkpoint and backup regions.
    pub fn with_regions(sizes: [usize; 3], erased: u8) -> Self {
        const {
            assert!(WRITE > 0 && ERASE % WRITE == 0);
        }
        assert!(
            erased == 0xFF || erased == 0x00,
            "erased value must be 0xFF or 0x00"
        );
        let region = |len: usize| {
            assert!(
                len % ERASE == 0,
                "region size must be a multiple of the erase size"
            );
            let img = Image {
                bytes: vec![erased; len],
                programmed: vec![false; len / WRITE],
            };
            SimRegion {
                live: img.clone(),
                durable: img,
                pending: Vec::new(),
            }
        };
        SimStorage {
            regions: sizes.map(region),
            erased,
            counters: Counters::default(),
            cut_in: None,
            interrupted: None,
            powered: true,
            fail: None,
            violations: Vec::new(),
            whole_records: false,
            prepared: Vec::new(),
            rewritable: false,
            released: Vec::new(),
            salts: 0,
            fixed_salt: None,
        }
    }

    /// Operation counts since creation or the last [`SimStorage::reset_counters`].
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Makes the medium ask for whole records, as the file adapter does
    /// ([`Storage::whole_records`]), so the core's other order of writing a sealed record runs
    /// under its power cuts too.
    pub fn set_whole_records(&mut self, on: bool) {
        self.whole_records = on;
    }

    /// Makes the medium behave as a file ([`Storage::rewritable`]): a write replaces what was
    /// there, whatever it was (no NOR rule is checked); a torn write leaves each word either
    /// as it was or as written, never half of its bits; an interrupted erase leaves each block
    /// erased or as it was. Unsynced writes still survive in any subset, as a page cache's
    /// pages reach the disk in any order. Meant for media created with `erased` = `0x00`.
    pub fn set_rewritable(&mut self, on: bool) {
        self.rewritable = on;
    }

    /// Makes every new segment's salt ([`Storage::salt`]) `salt`: a test can then forge
    /// records the way a writer who knew the salt could.
    pub fn fix_salt(&mut self, salt: u32) {
        self.fixed_salt = Some(salt);
    }

    /// Every range the core asked the medium to prepare ([`Storage::prepare`]), in order.
    pub fn prepared(&self) -> &[(Region, u64, u64)] {
        &self.prepared
    }

    /// Every range the core handed back ([`Storage::release`]), in order.
    pub fn released(&self) -> &[(Region, u64, u64)] {
        &self.released
    }

    /// Zeroes the counters.
    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
    }

    /// Breaches of NOR rules by the core (double writes, misaligned access). Must stay empty.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// True once a scheduled power cut has happened and until [`SimStorage::reboot`].
    pub fn is_powered_off(&self) -> bool {
        !self.powered
    }

    /// Schedules a power cut: the mutation (write, erase or sync) after `n` more succeed is
    /// interrupted, and everything after it fails.
    pub fn cut_power_after(&mut self, n: u64) {
        self.cut_in = Some(n);
    }

    /// Makes the `n`-th next operation of `kind` (1 = the next one) fail with an I/O error.
    /// The failed operation has no effect.
    pub fn fail_nth(&mut self, kind: OpKind, n: u64) {
        self.fail_nth_as(kind, n, StorageErrorKind::Io);
    }

    /// As [`SimStorage::fail_nth`], failing with an error of kind `error` (for example
    /// `NoSpace`, as a file adapter reports a full disk).
    pub fn fail_nth_as(&mut self, kind: OpKind, n: u64, error: StorageErrorKind) {
        self.fail = Some((kind, n, error));
    }

    /// Cuts the power now (if it is not already off) and restarts the medium from the image a
    /// real device would hold, chosen by `seed` under `policy`.
    pub fn reboot(&mut self, seed: u64, policy: CrashPolicy) {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let erased = self.erased;
        let rewritable = self.rewritable;
        for (ri, region) in self.regions.iter_mut().enumerate() {
            let mut img = region.durable.clone();
            for (i, op) in region.pending.iter().enumerate() {
                let interrupted = self.interrupted == Some((ri, i));
                let fate = if interrupted {
                    Fate::Torn
                } else {
                    match policy {
                        CrashPolicy::LoseUnsynced => Fate::Lost,
                        CrashPolicy::KeepUnsynced => Fate::Whole,
                        CrashPolicy::Random => match rng.random_range(0..10) {
                            0..=3 => Fate::Whole,
                            4..=7 => Fate::Lost,
                            _ => Fate::Torn,
                        },
                    }
                };
                let medium = Cells {
                    erased,
                    write: WRITE,
                    erase: ERASE,
                    rewritable,
                };
                apply_crashed(&mut img, op, fate, medium, &mut rng);
            }
            region.live = img.clone();
            region.durable = img;
            region.pending.clear();
        }
        self.interrupted = None;
        self.cut_in = None;
        self.powered = true;
    }

    /// Flips one bit in both images, as media decay would.
    pub fn flip_bit(&mut self, region: Region, offset: usize, bit: u8) {
        let r = &mut self.regions[region_index(region)];
        r.live.bytes[offset] ^= 1 << bit;
        r.durable.bytes[offset] ^= 1 << bit;
    }

    /// Overwrites bytes in both images, ignoring NOR rules, as tampering or a foreign writer
    /// would. Word state is left as is.
    pub fn overwrite(&mut self, region: Region, offset: usize, data: &[u8]) {
        let r = &mut self.regions[region_index(region)];
        r.live.bytes[offset..offset + data.len()].copy_from_slice(data);
        r.durable.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    /// The live image of a region.
    pub fn image(&self, region: Region) -> &[u8] {
        &self.regions[region_index(region)].live.bytes
    }

    fn fault(&mut self, kind: OpKind) -> Result<(), SimError> {
        if !self.powered {
            return Err(SimError {
                kind: StorageErrorKind::PowerLoss,
                what: "the power is off",
            });
        }
        if let Some((k, n, error)) = self.fail {
            if k == kind {
                if n <= 1 {
                    self.fail = None;
                    return Err(SimError {
                        kind: error,
                        what: "injected error",
                    });
                }
                self.fail = Some((k, n - 1, error));
            }
        }
        Ok(())
    }

    /// Counts down to a scheduled power cut; true if this mutation is the interrupted one.
    fn cut_now(&mut self) -> bool {
        let cut = count_down(&mut self.cut_in);
        if cut {
            self.powered = false;
        }
        cut
    }

    fn violation(&mut self, what: String) -> SimError {
        self.violations.push(what);
        SimError {
            kind: StorageErrorKind::Other,
            what: "NOR rule broken (see violations)",
        }
    }

    fn check_range(&mut self, ri: usize, offset: u64, len: usize) -> Result<usize, SimError> {
        let size = self.regions[ri].live.bytes.len() as u64;
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(SimError {
                kind: StorageErrorKind::OutOfBounds,
                what: "range outside the region",
            });
        }
        Ok(offset as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Whole,
    Lost,
    Torn,
}

/// Programs `data` over `old` the way NOR cells do: bits move only away from the erased value.
fn program(old: u8, data: u8, erased: u8) -> u8 {
    if erased == 0xFF {
        old & data
    } else {
        old | data
    }
}

/// What a crash leaves in the medium's cells depends on.
#[derive(Clone, Copy)]
struct Cells {
    erased: u8,
    write: usize,
    erase: usize,
    rewritable: bool,
}

impl Cells {
    /// What a byte holds after `data` is written over `old`.
    fn put(self, old: u8, data: u8) -> u8 {
        if self.rewritable {
            data
        } else {
            program(old, data, self.erased)
        }
    }
}

fn apply_crashed(img: &mut Image, op: &Op, fate: Fate, medium: Cells, rng: &mut Pcg64Mcg) {
    let Cells {
        erased,
        write,
        erase,
        rewritable,
    } = medium;
    match (op, fate) {
        (_, Fate::Lost) => {}
        (Op::Write { offset, data }, Fate::Whole) => {
            for (i, &b) in data.iter().enumerate() {
                img.bytes[offset + i] = medium.put(img.bytes[offset + i], b);
            }
            for w in offset / write..(offset + data.len()) / write {
                img.programmed[w] = true;
            }
        }
        (Op::Write { offset, data }, Fate::Torn) => {
            let words = data.len() / write;
            // A file's torn write leaves whole words, never half of a word's bits.
            let style = rng.random_range(0..if rewritable { 2 } else { 3 });
            let prefix = rng.random_range(0..=words);
            for w in 0..words {
                let keep = match style {
                    // Words land in order and the power fails part way.
                    0 => w < prefix,
                    // Words land in any order.
                    1 => rng.random_bool(0.5),
                    // Every word is half programmed: random bits of each.
                    _ => true,
                };
                if !keep {
                    continue;
                }
                for (i, &byte) in data.iter().enumerate().skip(w * write).take(write) {
                    let target = medium.put(img.bytes[offset + i], byte);
                    img.bytes[offset + i] = if style == 2 {
                        // Some of the bits that should move, move.
                        let moving = img.bytes[offset + i] ^ target;
                        img.bytes[offset + i] ^ (moving & rng.random::<u8>())
                    } else {
                        target
                    };
                }
                img.programmed[offset / write + w] = true;
            }
        }
        (Op::Erase { from, to }, Fate::Whole) => erase_range(img, *from, *to, erased, write),
        (Op::Erase { from, to }, Fate::Torn) => {
            for block in (*from..*to).step_by(erase) {
                // A file's interrupted erase (zeros written, or a hole punched) leaves each
                // block zeroed or as it was.
                match rng.random_range(0..if rewritable { 2 } else { 3 }) {
                    0 => erase_range(img, block, block + erase, erased, write),
                    1 => {}
                    _ => {
                        // Interrupted mid-erase: the block holds garbage and must be erased again.
                        for b in &mut img.bytes[block..block + erase] {
                            *b = rng.random();
                        }
                        for p in &mut img.programmed[block / write..(block + erase) / write] {
                            *p = true;
                        }
                    }
                }
            }
        }
    }
}

fn erase_range(img: &mut Image, from: usize, to: usize, erased: u8, write: usize) {
    img.bytes[from..to].fill(erased);
    img.programmed[from / write..to / write].fill(false);
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for SimStorage<WRITE, ERASE> {
    type Error = SimError;
}

impl<const WRITE: usize, const ERASE: usize> Storage for SimStorage<WRITE, ERASE> {
    const READ_SIZE: usize = 1;
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn capacity(&self, region: Region) -> u64 {
        self.regions[region_index(region)].live.bytes.len() as u64
    }

    fn read(&mut self, region: Region, offset: u64, buf: &mut [u8]) -> Result<(), SimError> {
        self.fault(OpKind::Read)?;
        let ri = region_index(region);
        let at = self.check_range(ri, offset, buf.len())?;
        buf.copy_from_slice(&self.regions[ri].live.bytes[at..at + buf.len()]);
        self.counters.reads += 1;
        self.counters.bytes_read += buf.len() as u64;
        Ok(())
    }

    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), SimError> {
        self.fault(OpKind::Write)?;
        let ri = region_index(region);
        let at = self.check_range(ri, offset, data.len())?;
        if at % WRITE != 0 || data.len() % WRITE != 0 {
            return Err(self.violation(format!(
                "{region:?}: write of {} bytes at {at} is not aligned to {WRITE}",
                data.len()
            )));
        }
        for w in at / WRITE..(at + data.len()) / WRITE {
            if !self.rewritable && self.regions[ri].live.programmed[w] {
                return Err(self.violation(format!(
                    "{region:?}: word at {} written twice without an erase",
                    w * WRITE
                )));
            }
        }
        self.counters.writes += 1;
        self.counters.bytes_written += data.len() as u64;
        let r = &mut self.regions[ri];
        r.pending.push(Op::Write {
            offset: at,
            data: data.to_vec(),
        });
        if self.cut_now() {
            self.interrupted = Some((ri, self.regions[ri].pending.len() - 1));
            return Err(SimError {
                kind: StorageErrorKind::PowerLoss,
                what: "power cut during write",
            });
        }
        let medium = Cells {
            erased: self.erased,
            write: WRITE,
            erase: ERASE,
            rewritable: self.rewritable,
        };
        let r = &mut self.regions[ri];
        for (i, &b) in data.iter().enumerate() {
            r.live.bytes[at + i] = medium.put(r.live.bytes[at + i], b);
        }
        r.live.programmed[at / WRITE..(at + data.len()) / WRITE].fill(true);
        Ok(())
    }

    fn erase(&mut self, region: Region, from: u64, to: u64) -> Result<(), SimError> {
        self.fault(OpKind::Erase)?;
        let ri = region_index(region);
        let len = to.saturating_sub(from) as usize;
        let at = self.check_range(ri, from, len)?;
        if at % ERASE != 0 || len % ERASE != 0 || to < from {
            return Err(self.violation(format!(
                "{region:?}: erase [{from}, {to}) is not aligned to {ERASE}"
            )));
        }
        self.counters.erases += 1;
        self.counters.bytes_erased += len as u64;
        self.regions[ri].pending.push(Op::Erase {
            from: at,
            to: at + len,
        });
        if self.cut_now() {
            self.interrupted = Some((ri, self.regions[ri].pending.len() - 1));
            return Err(SimError {
                kind: StorageErrorKind::PowerLoss,
                what: "power cut during erase",
            });
        }
        let erased = self.erased;
        erase_range(&mut self.regions[ri].live, at, at + len, erased, WRITE);
        Ok(())
    }

    fn whole_records(&self) -> bool {
        self.whole_records
    }

    fn rewritable(&self) -> bool {
        self.rewritable
    }

    /// A different number for every segment, repeatable from run to run (a splitmix64 step).
    fn salt(&mut self) -> u32 {
        if let Some(salt) = self.fixed_salt {
            return salt;
        }
        self.salts += 1;
        let mut z = self.salts.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u32
    }

    /// Records the call; a simulated medium needs nothing made ready.
    fn prepare(&mut self, region: Region, from: u64, to: u64) -> Result<(), SimError> {
        self.prepared.push((region, from, to));
        Ok(())
    }

    /// Records the call and destroys the range, at once and durably, as a file deleted or
    /// reused for another segment would be: every byte becomes a pattern that is neither
    /// erased nor anything the core wrote, so a segment released while something still needed
    /// it loses that at once.
    fn release(&mut self, region: Region, from: u64, to: u64) -> Result<(), SimError> {
        self.released.push((region, from, to));
        let ri = region_index(region);
        let len = to.saturating_sub(from) as usize;
        let at = self.check_range(ri, from, len)?;
        let r = &mut self.regions[ri];
        for image in [&mut r.live, &mut r.durable] {
            for (i, b) in image.bytes[at..at + len].iter_mut().enumerate() {
                *b = 0xA5 ^ (i as u8).wrapping_mul(31);
            }
            image.programmed[at / WRITE..(at + len) / WRITE].fill(false);
        }
        Ok(())
    }

    fn sync(&mut self, region: Region) -> Result<(), SimError> {
        self.fault(OpKind::Sync)?;
        self.counters.syncs += 1;
        if self.cut_now() {
            // Part of the unsynced data may have reached the medium; reboot decides which.
            return Err(SimError {
                kind: StorageErrorKind::PowerLoss,
                what: "power cut during sync",
            });
        }
        let r = &mut self.regions[region_index(region)];
        r.durable = r.live.clone();
        r.pending.clear();
        Ok(())
    }
}

/// Group commit on the simulated medium, which has no second thread: the sync is made when it
/// begins, and the ticket carries its outcome to the run (a fault scheduled for the next sync
/// fails it there). A commit still waits for the finish to be applied.
impl<const WRITE: usize, const ERASE: usize> SplitSync for SimStorage<WRITE, ERASE> {
    type Ticket = Result<(), SimError>;

    fn begin_log_sync(&mut self) -> Self::Ticket {
        self.sync(Region::Log)
    }

    fn run_log_sync(ticket: &Self::Ticket) -> Result<(), SimError> {
        ticket.clone()
    }

    fn settle_log_sync(&mut self, _: &Self::Ticket) {}
}
