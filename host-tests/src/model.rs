//! A model-based checker: random transactions on a channel over [`SimStorage`], checked against
//! a plain `VecDeque`, with power cuts at chosen or random points.
//!
//! After every recovery it checks that:
//! - every committed put not consumed by a committed take is present exactly once;
//! - a transaction whose commit was in flight at the cut is all-or-nothing;
//! - nothing uncommitted is delivered, and an uncommitted take is delivered again;
//! - a committed take never comes back;
//! - the order is FIFO in commit order;
//! - no delivered byte differs from what was put;
//! - the core broke no NOR rule.
//!
//! Then a copy of the medium decays (random bit flips in written data) and is drained: media
//! damage may lose events, but nothing delivered may differ from what was put.
//!
//! Every run is a pure function of its seed and cut point, so a failure replays exactly with
//! `cargo xtask sim --seed S --cut K`.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::collections::HashMap;

use sluicegate_core::record::{
    align_up, RecordHeader, SealRecord, SegmentCheck, SegmentHeader, RECORD_HEADER_BYTES,
    SEAL_PAYLOAD_BYTES, SEGMENT_FLAG_SEALED, SEGMENT_HEADER_BYTES,
};
use sluicegate_core::seal::{Key, KeyId, SALT_BYTES};
use sluicegate_core::{
    Algorithm, Channel, Config, Error, RecoveryPath, Region, StaticKeys, StorageErrorKind, Txn,
};

use crate::nor::{NorError, SimNor};
use crate::sim::{CrashPolicy, SimError, SimStorage};
use sluicegate_core::Storage;
use sluicegate_flash::{AsyncFlashStorage, FlashError, FlashStorage};

use crate::asynch::Yielding;

/// The shape of a checked run.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The channel's configuration. `capacity` must equal `max_transactions *
    /// transaction_capacity` so the checker can read the whole queue without consuming it.
    pub config: Config,
    /// The log region's size.
    pub log_bytes: usize,
    /// The medium's erased value.
    pub erased: u8,
    /// Channel operations per epoch (an epoch ends in a power cut or a clean stop).
    pub steps: usize,
    /// Most transactions open at once in the workload.
    pub concurrent: usize,
    /// The size of each checkpoint region (0: no checkpoints, recovery by full replay).
    pub slot_bytes: usize,
    /// Probability that a checkpoint region is damaged before a recovery (0 to 1).
    pub damage_checkpoints: f64,
    /// On NOR media ([`FlashSim`]): bits a program interrupted by a power cut did not finish
    /// read differently from one read to the next, until their block is erased. Off by default.
    /// The first recovery's verdict on such a record is kept by the checkpoint the open writes,
    /// so runs with this on need intact checkpoint regions (docs/guarantees.md, "On NOR flash").
    pub unstable_reads: bool,
    /// Seal the log and checkpoints with [`SIM_KEYS`]' first key. The salt is fixed (as on
    /// firmware without an entropy source), so the run's nonce check proves that sequence
    /// numbers alone keep nonces unique across every power cut.
    pub sealed: bool,
    /// The AEAD of a sealed run's log segments (checkpoints are always XChaCha20-Poly1305).
    pub algorithm: Algorithm,
    /// On [`SimStorage`]: the medium asks for whole records (`Storage::whole_records`), as
    /// the file adapter does, so a sealed record is written header first in one write instead
    /// of its body and then its header.
    pub whole_records: bool,
    /// On [`SimStorage`]: the medium behaves as a file (`Storage::rewritable`), so a run goes
    /// on in the newest segment after clearing the previous run's tail, instead of opening a
    /// segment of its own.
    pub rewritable: bool,
}

/// The keys of sealed runs.
pub const SIM_KEYS: [(KeyId, Key); 2] = [(1, [0x5a; 32]), (2, [0xa5; 32])];

/// The channel every run drives: keys are always given, and used when the scenario is sealed.
pub type SimChannel<'a, M> = Channel<&'a mut M, &'a mut [u64], StaticKeys<'static>>;

/// Opens the scenario's channel on `medium`.
pub fn open_on<'a, M: Medium>(
    medium: &'a mut M,
    memory: &'a mut [u64],
    scenario: &Scenario,
) -> Result<SimChannel<'a, M>, Error<M::Error>> {
    let keys = StaticKeys::new(&SIM_KEYS, if scenario.sealed { Some(1) } else { None })
        .with_algorithm(scenario.algorithm);
    let mut channel = Channel::open_with_keys(medium, memory, scenario.config, keys)?;
    M::settle(&mut channel)?;
    Ok(channel)
}

impl Scenario {
    /// The same scenario, sealed.
    pub const fn sealed(mut self) -> Self {
        self.sealed = true;
        self
    }

    /// The scenario the runner uses for `seed`: [`Scenario::small`] on a medium that erases to
    /// `0xFF` or to `0x00`, with one to three transactions open at once, all chosen by the seed.
    ///
    /// Three seeds in four also take checkpoints, automatically every 1 to 3 commits, in steps
    /// of 8 entries, and have their checkpoint regions damaged before some recoveries. Half the
    /// seeds (in runs of six) seal the log and checkpoints; of those, every other run of six
    /// seals the log with AES-256-GCM instead of XChaCha20-Poly1305. In runs of 24, the
    /// simulated medium asks for whole records or not. One run of eight seeds in three behaves
    /// as a file (rewritable). Of the plaintext seeds, every other run of five writes a compact
    /// log (`Config::with_compact_records`), a quarter of all seeds.
    pub const fn varied(seed: u64, steps: usize) -> Self {
        let mut s = Scenario::small(steps);
        s.erased = if seed % 2 == 0 { 0xFF } else { 0x00 };
        s.concurrent = 1 + (seed / 2 % 3) as usize;
        if seed % 4 != 0 {
            s = s.with_checkpoints((seed % 4) as u32);
        }
        s.sealed = seed / 6 % 2 == 1;
        if seed / 12 % 2 == 1 {
            s.algorithm = Algorithm::Aes256Gcm;
        }
        s.whole_records = seed / 24 % 2 == 1;
        s.rewritable = seed / 8 % 3 == 1;
        if !s.sealed && seed / 5 % 2 == 1 {
            s.config = s.config.with_compact_records();
        }
        s
    }

    /// The same scenario with checkpoint regions, a checkpoint every `every` commits, and
    /// damage to a checkpoint region before one recovery in three.
    pub const fn with_checkpoints(mut self, every: u32) -> Self {
        self.config = self
            .config
            .with_checkpoints(every, 0, 0)
            .with_checkpoint_step(8);
        self.slot_bytes = 512;
        self.damage_checkpoints = 0.33;
        self
    }

    /// A small scenario whose log is 8 segments of 512 bytes, so segments fill, roll and get
    /// reclaimed within a few dozen transactions. Queue entries are packed as tightly as that
    /// allows (`with_log_segments(8)`: 9 + 3 + 3 bits), so a packing that drops a bit loses
    /// events the checker sees.
    pub const fn small(steps: usize) -> Self {
        Scenario {
            config: Config::new(24, 6, 4, 40, 512).with_log_segments(8),
            log_bytes: 8 * 512,
            erased: 0xFF,
            steps,
            concurrent: 2,
            slot_bytes: 0,
            damage_checkpoints: 0.0,
            unstable_reads: false,
            sealed: false,
            algorithm: Algorithm::XChaCha20Poly1305,
            whole_records: false,
            rewritable: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Power cuts simulated and recovered from.
    pub crashes: u64,
    /// Recoveries checked against the model.
    pub recoveries: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Events delivered by takes.
    pub delivered: u64,
    /// Puts refused because the log was full (allowed, counted).
    pub log_full: u64,
    /// Put commits recovery dropped because a put they list did not survive.
    pub torn_commits_dropped: u64,
    /// Damaged records recovery skipped because the next record was intact.
    pub corrupt_records_skipped: u64,
    /// Uncommitted put records recovery ignored.
    pub uncommitted_puts: u64,
    /// Damaged events a take refused to deliver in the media-decay checks.
    pub decayed_events_refused: u64,
    /// Recoveries by path: new, checkpoint, backup, full replay.
    pub paths: [u64; 4],
    /// Checkpoints completed.
    pub checkpoints: u64,
    /// Runs that went on in the newest segment after clearing the previous run's tail.
    pub segments_continued: u64,
    /// Distinct nonces of sealed records found on the medium and checked for reuse.
    pub nonces_checked: u64,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.crashes += o.crashes;
        self.recoveries += o.recoveries;
        self.commits += o.commits;
        self.delivered += o.delivered;
        self.log_full += o.log_full;
        self.torn_commits_dropped += o.torn_commits_dropped;
        self.corrupt_records_skipped += o.corrupt_records_skipped;
        self.uncommitted_puts += o.uncommitted_puts;
        self.decayed_events_refused += o.decayed_events_refused;
        for (a, b) in self.paths.iter_mut().zip(o.paths) {
            *a += b;
        }
        self.checkpoints += o.checkpoints;
        self.segments_continued += o.segments_continued;
        self.nonces_checked += o.nonces_checked;
    }
}

/// The event body for `id`: its id then a filler derived from it, of a length derived from it.
pub fn event_bytes(id: u64, max_event: usize) -> Vec<u8> {
    let filler = (id as usize).wrapping_mul(13) % (max_event - 8 + 1);
    let mut v = id.to_le_bytes().to_vec();
    v.extend((0..filler).map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8)));
    v
}

/// The id of a delivered event, if its bytes are exactly what was put.
pub fn decode_event(bytes: &[u8], max_event: usize) -> Option<u64> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    (event_bytes(id, max_event) == bytes).then_some(id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Put,
    Take,
}

#[derive(Debug)]
struct OpenTxn {
    handle: Txn,
    kind: Kind,
    /// Ids put, or ids taken.
    ids: Vec<u64>,
    /// Operations to do before finishing.
    target: usize,
}

/// A transaction whose commit was under way when the power failed (or the process died).
#[derive(Debug, Clone)]
pub enum InFlight {
    /// A put commit, with the ids it put.
    Put(Vec<u64>),
    /// A take commit, with the ids it took.
    Take(Vec<u64>),
}

/// A simulated medium the checker can run the channel on, cut the power of, and damage: the
/// core's own [`SimStorage`], or the flash adapter over [`SimNor`] parts ([`FlashSim`]).
pub trait Medium: Storage + Clone {
    /// The program word in bytes, for messages.
    const WORD: usize;
    /// The flag `cargo xtask sim` needs to replay a run on this medium.
    const REPLAY_FLAG: &'static str;
    /// A blank medium for the scenario: its log, and its checkpoint regions if it has any.
    fn blank(scenario: &Scenario) -> Self;
    /// Cuts the power during the `n`th mutation from now.
    fn cut_power_after(&mut self, n: u64);
    /// True once the power has been cut.
    fn is_powered_off(&self) -> bool;
    /// Powers up again, building what survived the cut as `policy` says.
    fn reboot(&mut self, seed: u64, policy: CrashPolicy);
    /// The first rule of the medium the core broke, if any.
    fn first_violation(&self) -> Option<String>;
    /// Offsets in `region` whose byte differs from the erased value.
    fn written(&self, region: Region, erased: u8) -> Vec<usize>;
    /// Flips one bit (media decay).
    fn flip(&mut self, region: Region, offset: usize, bit: u8);
    /// Mutations (writes, erases, syncs) made so far.
    fn mutations(&self) -> u64;
    /// True if the error means the power is off.
    fn is_power_loss(e: &Self::Error) -> bool;
    /// Commits `txn` through group commit (`write_commit`, then a sync begun, run and
    /// finished through [`sluicegate_core::SplitSync`]), on media that offer it; `None` on
    /// the others.
    fn group_commit(
        channel: &mut SimChannel<'_, Self>,
        txn: Txn,
    ) -> Option<Result<(), Error<Self::Error>>> {
        let _ = (channel, txn);
        None
    }
    /// Makes what the core handed the medium reach it, where the medium defers that (the
    /// async flash adapter's stage): called after an open and after every commit, before the
    /// checker counts on them, as `AsyncChannel` does before it returns. Nothing by default.
    fn settle(channel: &mut SimChannel<'_, Self>) -> Result<(), Error<Self::Error>> {
        let _ = channel;
        Ok(())
    }
}

impl<const W: usize, const E: usize> Medium for SimStorage<W, E> {
    const WORD: usize = W;
    const REPLAY_FLAG: &'static str = "";
    fn blank(scenario: &Scenario) -> Self {
        let slots = scenario.slot_bytes;
        let mut m = SimStorage::with_regions([scenario.log_bytes, slots, slots], scenario.erased);
        m.set_whole_records(scenario.whole_records);
        m.set_rewritable(scenario.rewritable);
        m
    }
    fn cut_power_after(&mut self, n: u64) {
        SimStorage::cut_power_after(self, n)
    }
    fn is_powered_off(&self) -> bool {
        SimStorage::is_powered_off(self)
    }
    fn reboot(&mut self, seed: u64, policy: CrashPolicy) {
        SimStorage::reboot(self, seed, policy)
    }
    fn first_violation(&self) -> Option<String> {
        self.violations().first().cloned()
    }
    fn written(&self, region: Region, erased: u8) -> Vec<usize> {
        written_offsets(self.image(region), erased)
    }
    fn flip(&mut self, region: Region, offset: usize, bit: u8) {
        self.flip_bit(region, offset, bit)
    }
    fn mutations(&self) -> u64 {
        self.counters().mutations()
    }
    fn is_power_loss(e: &SimError) -> bool {
        e.kind == StorageErrorKind::PowerLoss
    }
    fn group_commit(
        channel: &mut SimChannel<'_, Self>,
        txn: Txn,
    ) -> Option<Result<(), Error<SimError>>> {
        let mut commit = || {
            if channel.write_commit(txn)? {
                let mut sync = channel.begin_sync()?;
                sync.run();
                channel.finish_sync(sync)?;
            }
            Ok(())
        };
        Some(commit())
    }
}

/// The flash adapter over three simulated NOR parts (log, checkpoint, backup).
pub type FlashSim<const W: usize, const E: usize> =
    FlashStorage<SimNor<W, E>, SimNor<W, E>, SimNor<W, E>>;

impl<const W: usize, const E: usize> Medium for FlashSim<W, E> {
    const WORD: usize = W;
    const REPLAY_FLAG: &'static str = " --flash";
    fn blank(scenario: &Scenario) -> Self {
        // A scenario without checkpoints gets empty slot partitions.
        let slots = scenario.slot_bytes;
        let part = |bytes| {
            let mut p = SimNor::new(bytes, scenario.erased);
            p.set_unstable_reads(scenario.unstable_reads);
            p
        };
        let log = part(scenario.log_bytes);
        let mut checkpoint = part(slots);
        let mut backup = part(slots);
        checkpoint.share_power_with(&log);
        backup.share_power_with(&log);
        FlashStorage::new(log, checkpoint, backup)
            .expect("the scenario's sizes are whole erase blocks")
    }
    fn cut_power_after(&mut self, n: u64) {
        // The three parts share one power line, so one countdown covers them all.
        self.devices_mut().0.cut_power_after(n);
    }
    fn is_powered_off(&self) -> bool {
        self.devices().0.is_powered_off()
    }
    fn reboot(&mut self, seed: u64, _policy: CrashPolicy) {
        // NOR keeps every completed operation; only the one under way at the cut was torn.
        let (l, c, b) = self.devices_mut();
        for (i, part) in [l, c, b].into_iter().enumerate() {
            part.reboot(seed.wrapping_add(i as u64));
        }
    }
    fn first_violation(&self) -> Option<String> {
        let (l, c, b) = self.devices();
        [l, c, b]
            .into_iter()
            .find_map(|p| p.violations().first().cloned())
    }
    fn written(&self, region: Region, erased: u8) -> Vec<usize> {
        let (l, c, b) = self.devices();
        let part = match region {
            Region::Log => l,
            Region::Checkpoint => c,
            Region::Backup => b,
        };
        written_offsets(part.image(), erased)
    }
    fn flip(&mut self, region: Region, offset: usize, bit: u8) {
        let (l, c, b) = self.devices_mut();
        match region {
            Region::Log => l.flip_bit(offset, bit),
            Region::Checkpoint => c.flip_bit(offset, bit),
            Region::Backup => b.flip_bit(offset, bit),
        }
    }
    fn mutations(&self) -> u64 {
        let (l, c, b) = self.devices();
        [l, c, b]
            .into_iter()
            .map(|p| p.counters().writes + p.counters().erases)
            .sum()
    }
    fn is_power_loss(e: &FlashError<NorError>) -> bool {
        e.device_error() == Some(&NorError::PowerLoss)
    }
}

/// The flash adapter's async side over three simulated NOR parts behind [`Yielding`], its
/// writes and erases staged as under an `AsyncChannel` and made only when the checker settles
/// (after an open and after each commit), or when a read or a full stage needs them.
pub type AsyncFlashSim<const W: usize, const E: usize> =
    AsyncFlashStorage<Yielding<SimNor<W, E>>, Yielding<SimNor<W, E>>, Yielding<SimNor<W, E>>>;

impl<const W: usize, const E: usize> Medium for AsyncFlashSim<W, E> {
    const WORD: usize = W;
    const REPLAY_FLAG: &'static str = " --flash-async";
    fn blank(scenario: &Scenario) -> Self {
        let (log, checkpoint, backup) = FlashSim::<W, E>::blank(scenario).into_devices();
        let mut s = AsyncFlashStorage::new(
            Yielding::new(log),
            Yielding::new(checkpoint),
            Yielding::new(backup),
        )
        .expect("the scenario's sizes are whole erase blocks");
        s.set_staging(true);
        s
    }
    fn cut_power_after(&mut self, n: u64) {
        self.devices_mut().0.inner_mut().cut_power_after(n);
    }
    fn is_powered_off(&self) -> bool {
        self.devices().0.inner().is_powered_off()
    }
    fn reboot(&mut self, seed: u64, _policy: CrashPolicy) {
        // What was staged and not made is gone, as the cut found it.
        let (l, c, b) = (*self).clone().into_devices();
        let mut parts = [l, c, b];
        for (i, part) in parts.iter_mut().enumerate() {
            part.inner_mut().reboot(seed.wrapping_add(i as u64));
        }
        let [l, c, b] = parts;
        *self = AsyncFlashStorage::new(l, c, b).expect("the same geometry");
        self.set_staging(true);
    }
    fn first_violation(&self) -> Option<String> {
        let (l, c, b) = self.devices();
        [l.inner(), c.inner(), b.inner()]
            .into_iter()
            .find_map(|p| p.violations().first().cloned())
    }
    fn written(&self, region: Region, erased: u8) -> Vec<usize> {
        let (l, c, b) = self.devices();
        let part = match region {
            Region::Log => l,
            Region::Checkpoint => c,
            Region::Backup => b,
        };
        written_offsets(part.inner().image(), erased)
    }
    fn flip(&mut self, region: Region, offset: usize, bit: u8) {
        let (l, c, b) = self.devices_mut();
        match region {
            Region::Log => l.inner_mut().flip_bit(offset, bit),
            Region::Checkpoint => c.inner_mut().flip_bit(offset, bit),
            Region::Backup => b.inner_mut().flip_bit(offset, bit),
        }
    }
    fn mutations(&self) -> u64 {
        let (l, c, b) = self.devices();
        [l.inner(), c.inner(), b.inner()]
            .into_iter()
            .map(|p| p.counters().writes + p.counters().erases)
            .sum()
    }
    fn is_power_loss(e: &FlashError<NorError>) -> bool {
        e.device_error() == Some(&NorError::PowerLoss)
    }
    fn settle(channel: &mut SimChannel<'_, Self>) -> Result<(), Error<Self::Error>> {
        block_on(channel.storage_mut().flush()).map_err(Error::Storage)
    }
}

/// Drives a future to completion on this thread (the checker has no executor).
fn block_on<F: core::future::Future>(f: F) -> F::Output {
    let mut f = core::pin::pin!(f);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    // Bounded: the simulated parts are ready after a few polls.
    loop {
        if let core::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Runs `epochs` epochs of the workload for `seed`. If `cut` is given, the power fails at that
/// mutation (counted from the first open) in the first epoch; later epochs end in power cuts at
/// random points. Returns what happened, or a description of the first violation.
pub fn run<const W: usize, const E: usize>(
    scenario: &Scenario,
    seed: u64,
    cut: Option<u64>,
    epochs: usize,
) -> Result<Outcome, String> {
    run_on::<SimStorage<W, E>>(scenario, seed, cut, epochs)
}

/// [`run`] on any simulated medium.
pub fn run_on<M: Medium>(
    scenario: &Scenario,
    seed: u64,
    cut: Option<u64>,
    epochs: usize,
) -> Result<Outcome, String> {
    let w = M::WORD;
    let unstable = if scenario.unstable_reads {
        " --unstable-reads"
    } else {
        ""
    };
    let flag = format!("{}{unstable}", M::REPLAY_FLAG);
    let fail = |what: String| {
        let cut_arg = cut.map(|k| format!(" --cut {k}")).unwrap_or_default();
        format!("word {w}{flag}: seed {seed} cut {cut:?}: {what}\n  replay: cargo xtask sim{flag} --word {w} --seed {seed}{cut_arg}")
    };
    let config = scenario.config;
    assert_eq!(
        config.capacity(),
        config.max_transactions() as u32 * config.transaction_capacity(),
        "the checker reads the whole queue through max_transactions take transactions"
    );
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut sim = M::blank(scenario);
    let mut memory = vec![0u64; config.memory_words()];
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut next_id = 0u64;
    let mut outcome = Outcome::default();
    let mut nonces = Nonces::new();

    for epoch in 0..epochs {
        let cut_at = match (epoch, cut) {
            (0, Some(k)) => Some(k),
            (0, None) => None,
            _ => Some(rng.random_range(0..scenario.steps as u64 * 3)),
        };
        if let Some(k) = cut_at {
            sim.cut_power_after(k);
        }
        let in_flight = {
            let opened = open_on(&mut sim, &mut memory[..], scenario);
            match opened {
                Err(e) if is_power_loss::<M>(&e) => None,
                Err(e) => return Err(fail(format!("open failed: {e}"))),
                Ok(mut channel) => {
                    let r = epoch_workload(
                        &mut channel,
                        scenario,
                        &mut rng,
                        &mut model,
                        &mut next_id,
                        &mut outcome,
                    );
                    let stats = channel.stats();
                    outcome.checkpoints += stats.checkpoints;
                    outcome.segments_continued += stats.segments_continued;
                    r.map_err(&fail)?
                }
            }
        };
        if sim.is_powered_off() {
            outcome.crashes += 1;
        }
        let policy = match rng.random_range(0..4) {
            0 => CrashPolicy::LoseUnsynced,
            1 => CrashPolicy::KeepUnsynced,
            _ => CrashPolicy::Random,
        };
        sim.reboot(rng.random(), policy);
        if let Some(v) = sim.first_violation() {
            return Err(fail(format!("NOR rule broken: {v}")));
        }
        if scenario.sealed {
            check_nonces(&mut sim, scenario, &mut nonces).map_err(&fail)?;
            outcome.nonces_checked = nonces.len() as u64;
        }
        if scenario.slot_bytes > 0 && rng.random_bool(scenario.damage_checkpoints) {
            // The log is intact: whatever happens to the checkpoints, nothing may be lost.
            let which = rng.random_range(0..3);
            for (i, region) in [Region::Checkpoint, Region::Backup].into_iter().enumerate() {
                if which == i || which == 2 {
                    damage_written(&mut sim, region, scenario.erased, &mut rng);
                }
            }
        }
        let channel = open_on(&mut sim, &mut memory[..], scenario)
            .map_err(|e| fail(format!("reopen after the cut failed: {e}")))?;
        let r = channel.recovery();
        outcome.paths[match r.path {
            RecoveryPath::New => 0,
            RecoveryPath::Checkpoint => 1,
            RecoveryPath::Backup => 2,
            _ => 3,
        }] += 1;
        // A power cut never takes a segment that queued events need: the check that makes a
        // deleted log file loud must stay silent here.
        if r.events_in_lost_segments > 0 {
            return Err(fail(format!(
                "recovery reports {} queued events in lost segments (slot {}) after a power cut",
                r.events_in_lost_segments, r.first_lost_slot
            )));
        }
        outcome.torn_commits_dropped += r.torn_commits_dropped;
        outcome.corrupt_records_skipped += r.corrupt_records_skipped;
        outcome.uncommitted_puts += r.uncommitted_puts;
        model = verify(channel, scenario, &model, in_flight.as_ref()).map_err(&fail)?;

        outcome.recoveries += 1;
        outcome.decayed_events_refused +=
            decay_check(&sim, scenario, &mut rng, next_id).map_err(&fail)?;
    }
    Ok(outcome)
}

fn is_power_loss<M: Medium>(e: &Error<M::Error>) -> bool {
    match e {
        Error::Storage(s) => M::is_power_loss(s),
        Error::Poisoned => true,
        _ => false,
    }
}

fn written_offsets(image: &[u8], erased: u8) -> Vec<usize> {
    image
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != erased)
        .map(|(i, _)| i)
        .collect()
}

/// Flips one random bit among the written bytes of a region, if it has any.
fn damage_written<M: Medium>(sim: &mut M, region: Region, erased: u8, rng: &mut Pcg64Mcg) {
    let written = sim.written(region, erased);
    if !written.is_empty() {
        let at = written[rng.random_range(0..written.len())];
        sim.flip(region, at, rng.random_range(0..8));
    }
}

/// Flips a few random bits in written parts of a copy of the log, reopens it and drains it.
/// Media decay may lose events, or bring back one whose take record it destroyed, but nothing
/// delivered may differ from what was put, nothing may panic, and no NOR rule may break.
/// Returns how many damaged events the channel refused to deliver.
fn decay_check<M: Medium>(
    sim: &M,
    scenario: &Scenario,
    rng: &mut Pcg64Mcg,
    next_id: u64,
) -> Result<u64, String> {
    let config = scenario.config;
    let max_event = config.max_event_bytes() as usize;
    let mut decayed = sim.clone();
    let written = decayed.written(Region::Log, scenario.erased);
    if written.is_empty() {
        return Ok(0);
    }
    let flips: Vec<(usize, u8)> = (0..rng.random_range(1..=3))
        .map(|_| {
            (
                written[rng.random_range(0..written.len())],
                rng.random_range(0..8),
            )
        })
        .collect();
    // Half the time the medium decays while the channel is closed (replay meets the damage),
    // half the time while it is open (only a take's own checks stand in the way).
    let while_open = rng.random_bool(0.5);
    if !while_open {
        for &(at, bit) in &flips {
            decayed.flip(Region::Log, at, bit);
        }
    }
    let mut memory = vec![0u64; config.memory_words()];
    let mut channel = match open_on(&mut decayed, &mut memory[..], scenario) {
        Ok(c) => c,
        // Refusing to open is allowed when the intact structures contradict each other, or when
        // a destroyed take record brought back more events than the capacity holds: both are
        // clear errors that lose nothing (a larger capacity opens the latter).
        Err(Error::Corrupted { .. } | Error::CapacityTooSmall { .. }) => return Ok(0),
        Err(e) => return Err(format!("decay: open failed: {e}")),
    };
    if while_open {
        for &(at, bit) in &flips {
            channel.storage_mut().flip(Region::Log, at, bit);
        }
    }
    let mut buf = vec![0u8; max_event];
    // Bounded: each round commits up to transaction_capacity takes from a finite queue.
    for _ in 0..=config.capacity() {
        let tx = channel.begin().map_err(|e| format!("decay: begin: {e}"))?;
        let mut n_taken = 0;
        while n_taken < config.transaction_capacity() {
            match channel.take(tx, &mut buf) {
                Ok(Some(n)) => match decode_event(&buf[..n], max_event) {
                    Some(id) if id < next_id => n_taken += 1,
                    _ => return Err(format!("decay: delivered bytes never put: {:?}", &buf[..n])),
                },
                Ok(None) | Err(Error::TransactionFull) => break,
                Err(e) => return Err(format!("decay: take: {e}")),
            }
        }
        match channel.commit(tx) {
            Ok(()) => {}
            Err(Error::LogFull) => {
                channel
                    .rollback(tx)
                    .map_err(|e| format!("decay: rollback: {e}"))?;
                break;
            }
            Err(e) => return Err(format!("decay: commit: {e}")),
        }
        if n_taken == 0 {
            break;
        }
    }
    let refused = channel.stats().corrupt_events_skipped;
    if let Some(v) = channel.storage().first_violation() {
        return Err(format!("decay: NOR rule broken: {v}"));
    }
    Ok(refused)
}

/// Runs random transactions until the step budget is spent or the power fails. Returns the
/// commit that was in flight when the power failed, if any.
fn epoch_workload<M: Medium>(
    channel: &mut SimChannel<'_, M>,
    scenario: &Scenario,
    rng: &mut Pcg64Mcg,
    model: &mut VecDeque<u64>,
    next_id: &mut u64,
    outcome: &mut Outcome,
) -> Result<Option<InFlight>, String> {
    let config = scenario.config;
    let max_event = config.max_event_bytes() as usize;
    let txn_cap = config.transaction_capacity() as usize;
    // Ids taken by open transactions; the next take must deliver the first model entry that
    // is not among them.
    let mut taken: Vec<u64> = Vec::new();
    let mut pending_puts = 0usize;
    let mut open: Vec<OpenTxn> = Vec::new();
    let mut buf = vec![0u8; max_event];

    for _ in 0..scenario.steps {
        if scenario.slot_bytes > 0 && rng.random_bool(0.03) {
            // A checkpoint on demand, with transactions open around it.
            match channel.checkpoint() {
                Ok(()) => {}
                Err(e) if is_power_loss::<M>(&e) => return Ok(None),
                Err(e) => return Err(format!("checkpoint failed: {e}")),
            }
            continue;
        }
        if open.len() < scenario.concurrent && (open.is_empty() || rng.random_bool(0.3)) {
            match channel.begin() {
                Ok(handle) => open.push(OpenTxn {
                    handle,
                    kind: Kind::Unknown,
                    ids: Vec::new(),
                    target: rng.random_range(0..=txn_cap),
                }),
                Err(e) => return Err(format!("begin failed: {e}")),
            }
            continue;
        }
        let i = rng.random_range(0..open.len());
        let t = &mut open[i];
        if t.kind == Kind::Unknown {
            let want_take = model.len() > taken.len() && rng.random_bool(0.45);
            t.kind = if want_take { Kind::Take } else { Kind::Put };
        }
        if t.ids.len() < t.target {
            match t.kind {
                Kind::Put => {
                    let id = *next_id;
                    let body = event_bytes(id, max_event);
                    match channel.put(t.handle, &body) {
                        Ok(()) => {
                            *next_id += 1;
                            t.ids.push(id);
                            pending_puts += 1;
                        }
                        Err(Error::ChannelFull) => {
                            if model.len() + pending_puts < config.capacity() as usize {
                                return Err(format!(
                                    "ChannelFull with {} queued and {pending_puts} pending",
                                    model.len()
                                ));
                            }
                            t.target = t.ids.len();
                        }
                        Err(Error::LogFull) => {
                            outcome.log_full += 1;
                            t.target = t.ids.len();
                        }
                        Err(e) if is_power_loss::<M>(&e) => return Ok(None),
                        Err(e) => return Err(format!("put failed: {e}")),
                    }
                }
                Kind::Take => match channel.take(t.handle, &mut buf) {
                    Ok(Some(n)) => {
                        let Some(id) = decode_event(&buf[..n], max_event) else {
                            return Err(format!("take delivered corrupt bytes {:?}", &buf[..n]));
                        };
                        let expected = model.iter().copied().find(|id| !taken.contains(id));
                        if expected != Some(id) {
                            return Err(format!(
                                "take delivered {id}, the model expected {expected:?}; {:?}",
                                channel.stats()
                            ));
                        }
                        taken.push(id);
                        t.ids.push(id);
                        outcome.delivered += 1;
                    }
                    Ok(None) => {
                        if model.len() > taken.len() {
                            return Err(format!(
                                "take found nothing, the model has {} available",
                                model.len() - taken.len()
                            ));
                        }
                        t.target = t.ids.len();
                    }
                    // A checkpoint step after a durable commit may be what lost the power.
                    Err(e) if is_power_loss::<M>(&e) => return Ok(None),
                    Err(e) => return Err(format!("take failed: {e}")),
                },
                Kind::Unknown => unreachable!("kind was just chosen"),
            }
            continue;
        }
        // Finish the transaction: mostly commit, sometimes roll back.
        let t = open.swap_remove(i);
        if rng.random_bool(0.2) {
            channel
                .rollback(t.handle)
                .map_err(|e| format!("rollback failed: {e}"))?;
            finish(model, &mut taken, &mut pending_puts, &t, false);
            continue;
        }
        // Every other commit goes through group commit, where the medium offers it.
        let grouped = if outcome.commits % 2 == 1 {
            M::group_commit(channel, t.handle)
        } else {
            None
        };
        let committed = grouped
            .unwrap_or_else(|| channel.commit(t.handle))
            .and_then(|()| M::settle(channel));
        match committed {
            Ok(()) => {
                outcome.commits += 1;
                finish(model, &mut taken, &mut pending_puts, &t, true);
            }
            Err(Error::LogFull) => {
                outcome.log_full += 1;
                channel
                    .rollback(t.handle)
                    .map_err(|e| format!("rollback after LogFull failed: {e}"))?;
                finish(model, &mut taken, &mut pending_puts, &t, false);
            }
            Err(e) if is_power_loss::<M>(&e) => {
                return Ok(Some(match t.kind {
                    Kind::Take => InFlight::Take(t.ids),
                    _ => InFlight::Put(t.ids),
                }));
            }
            Err(e) => return Err(format!("commit failed: {e}")),
        }
    }
    Ok(None)
}

/// Applies a finished transaction to the model.
fn finish(
    model: &mut VecDeque<u64>,
    taken: &mut Vec<u64>,
    pending_puts: &mut usize,
    t: &OpenTxn,
    committed: bool,
) {
    match t.kind {
        Kind::Put => {
            *pending_puts -= t.ids.len();
            if committed {
                model.extend(&t.ids);
            }
        }
        Kind::Take => {
            taken.retain(|id| !t.ids.contains(id));
            if committed {
                model.retain(|id| !t.ids.contains(id));
            }
        }
        Kind::Unknown => {}
    }
}

/// Reads the whole queue without consuming it (takes, then rollbacks) and checks it against the
/// model and the in-flight commit. Returns the model as it now stands.
fn verify<M: Medium>(
    mut channel: SimChannel<'_, M>,
    scenario: &Scenario,
    model: &VecDeque<u64>,
    in_flight: Option<&InFlight>,
) -> Result<VecDeque<u64>, String> {
    let config = scenario.config;
    let max_event = config.max_event_bytes() as usize;
    let mut buf = vec![0u8; max_event];
    let mut seen: Vec<u64> = Vec::new();
    let mut handles = Vec::new();
    'outer: for _ in 0..config.max_transactions() {
        let tx = channel.begin().map_err(|e| format!("verify begin: {e}"))?;
        handles.push(tx);
        for _ in 0..config.transaction_capacity() {
            match channel.take(tx, &mut buf) {
                Ok(Some(n)) => match decode_event(&buf[..n], max_event) {
                    Some(id) => seen.push(id),
                    None => {
                        return Err(format!("recovery delivered corrupt bytes {:?}", &buf[..n]))
                    }
                },
                Ok(None) => break 'outer,
                Err(e) => return Err(format!("verify take: {e}")),
            }
        }
    }
    for tx in handles {
        channel
            .rollback(tx)
            .map_err(|e| format!("verify rollback: {e}"))?;
    }
    let stats = channel.stats();
    if stats.corrupt_events_skipped != 0 {
        return Err(format!(
            "{} committed events were unreadable after recovery; recovery: {:?}",
            stats.corrupt_events_skipped,
            channel.recovery()
        ));
    }
    judge(&seen, model, in_flight).map_err(|e| format!("{e}; recovery: {:?}", channel.recovery()))
}

/// The verdict on a recovery: `seen`, the whole queue in order after recovery, must be the
/// model's queue, or (if a commit was in flight) the model's queue with that whole transaction
/// applied; nothing else. Returns the model as it now stands.
pub fn judge(
    seen: &[u64],
    model: &VecDeque<u64>,
    in_flight: Option<&InFlight>,
) -> Result<VecDeque<u64>, String> {
    let base: Vec<u64> = model.iter().copied().collect();
    let mut candidates = vec![base.clone()];
    match in_flight {
        Some(InFlight::Put(ids)) => {
            let mut with = base.clone();
            with.extend(ids);
            candidates.push(with);
        }
        Some(InFlight::Take(ids)) => {
            candidates.push(
                base.iter()
                    .copied()
                    .filter(|id| !ids.contains(id))
                    .collect(),
            );
        }
        None => {}
    }
    match candidates.into_iter().find(|c| c == seen) {
        Some(c) => Ok(c.into_iter().collect()),
        None => Err(format!(
            "after recovery the queue is {seen:?}; the model allows {base:?} (in flight: {in_flight:?})"
        )),
    }
}

/// Runs the first epoch of `seed` with a power cut at every mutation it makes, each followed by
/// a checked recovery and a second epoch ending in a random cut. Returns the crash points run.
pub fn exhaustive<const W: usize, const E: usize>(
    scenario: &Scenario,
    seed: u64,
) -> Result<(u64, Outcome), String> {
    exhaustive_on::<SimStorage<W, E>>(scenario, seed)
}

/// [`exhaustive`] on any simulated medium.
pub fn exhaustive_on<M: Medium>(scenario: &Scenario, seed: u64) -> Result<(u64, Outcome), String> {
    let total = mutations_of_first_epoch_on::<M>(scenario, seed)?;
    let mut outcome = Outcome::default();
    for k in 0..total {
        outcome += run_on::<M>(scenario, seed, Some(k), 2)?;
    }
    Ok((total, outcome))
}

/// How many mutations the first epoch of `seed` makes when nothing fails, counted from the
/// first open.
pub fn mutations_of_first_epoch<const W: usize, const E: usize>(
    scenario: &Scenario,
    seed: u64,
) -> Result<u64, String> {
    mutations_of_first_epoch_on::<SimStorage<W, E>>(scenario, seed)
}

/// [`mutations_of_first_epoch`] on any simulated medium.
pub fn mutations_of_first_epoch_on<M: Medium>(
    scenario: &Scenario,
    seed: u64,
) -> Result<u64, String> {
    // Run with a cut far beyond the end: the epoch completes, then count.
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let config = scenario.config;
    let mut sim = M::blank(scenario);
    let mut memory = vec![0u64; config.memory_words()];
    let mut model = VecDeque::new();
    let mut next_id = 0;
    let mut outcome = Outcome::default();
    let mut channel = open_on(&mut sim, &mut memory[..], scenario)
        .map_err(|e| format!("seed {seed}: open failed: {e}"))?;
    epoch_workload(
        &mut channel,
        scenario,
        &mut rng,
        &mut model,
        &mut next_id,
        &mut outcome,
    )
    .map_err(|e| format!("seed {seed} (no cut): {e}"))?;
    Ok(channel.storage().mutations())
}

/// Every nonce a run's sealed records were found under, with what was sealed under it.
type Nonces = HashMap<([u8; SALT_BYTES], u64, u32), Vec<u8>>;

/// Reads every sealed record on the medium and fails if a nonce (salt, segment, index) ever
/// sealed two different texts: a power cut, a torn write or a replay must never make the
/// channel reuse one. Records count only if intact (CRC), as replay would see them.
fn check_nonces<M: Medium>(
    sim: &mut M,
    scenario: &Scenario,
    seen: &mut Nonces,
) -> Result<(), String> {
    let seg = scenario.config.segment_bytes() as u64;
    let align = M::WRITE_SIZE as u64;
    let first = align_up(SEGMENT_HEADER_BYTES as u64, align);
    let read = |sim: &mut M, at: u64, buf: &mut [u8]| {
        sim.read(Region::Log, at, buf)
            .map_err(|e| format!("nonce check: read failed: {e:?}"))
    };
    for slot in 0..scenario.log_bytes as u64 / seg {
        let base = slot * seg;
        let mut hb = [0u8; SEGMENT_HEADER_BYTES];
        read(sim, base, &mut hb)?;
        let SegmentCheck::Valid(h) = SegmentHeader::decode(&hb) else {
            continue;
        };
        if h.flags & SEGMENT_FLAG_SEALED == 0 {
            continue;
        }
        let mut at = first;
        let mut index = 0u32;
        let mut salt = [0u8; SALT_BYTES];
        while at + RECORD_HEADER_BYTES as u64 <= seg {
            let mut rb = [0u8; RECORD_HEADER_BYTES];
            read(sim, base + at, &mut rb)?;
            let r = RecordHeader::decode(&rb);
            if r.wid_delta != index || at + RECORD_HEADER_BYTES as u64 + r.len as u64 > seg {
                break;
            }
            let mut payload = vec![0u8; r.len as usize];
            read(sim, base + at + RECORD_HEADER_BYTES as u64, &mut payload)?;
            if !r.check(h.binding(), &payload) {
                break;
            }
            if index == 0 {
                let b: [u8; SEAL_PAYLOAD_BYTES] = payload[..]
                    .try_into()
                    .map_err(|_| "seal record of the wrong length".to_string())?;
                match SealRecord::decode(&b) {
                    Some(seal) => salt = seal.salt,
                    None => break,
                }
            }
            // The sealed text with its header: the same nonce over other bytes is a reuse.
            let mut sealed = rb[4..].to_vec();
            sealed.extend_from_slice(&payload);
            if let Some(before) = seen.get(&(salt, h.seq, index)) {
                if *before != sealed {
                    return Err(format!(
                        "nonce reused: segment {} record {index} sealed two different texts",
                        h.seq
                    ));
                }
            } else {
                seen.insert((salt, h.seq, index), sealed);
            }
            at += align_up(RECORD_HEADER_BYTES as u64 + r.len as u64, align);
            index += 1;
        }
    }
    Ok(())
}
