//! Log segments reused without erasing their bodies (`Storage::rewritable`, files): whatever
//! lies past a segment's last record, a record of an earlier lap of the ring or a record image
//! some event body carried, never passes for one of the segment's records.
//!
//! The planted records here are whole, with correct CRCs and the very write-order deltas, kinds
//! and pointers the walk expects next, so only the segment's binding (its sequence number and
//! salt, `SegmentHeader::binding`) tells them apart. Each test also plants one bound the way
//! the segment's own records are, and checks that it does pass: the planted records are right,
//! so the refusals are the binding's doing.

use sluicegate_core::record::{Pointer, RecordHeader, RecordKind, SegmentHeader};
use sluicegate_core::walk::{self, Geometry, HeaderRead};
use sluicegate_core::{Channel, Config, Region, Storage};
use sluicegate_sim::CrashPolicy;

mod common;
use common::{file_sim, peek_all, put_all, take_n, v, Chan, Sim};

const CONFIG: Config = Config::new(48, 4, 3, 64, 512);
const SEGMENTS: u64 = 8;
const SEGMENT_BYTES: u64 = 512;
const GEO: Geometry = Geometry {
    segments: SEGMENTS,
    segment_bytes: SEGMENT_BYTES,
    align: 4,
    compact: false,
};
const GHOST: &[u8] = b"ghost!!!";

fn memory() -> Vec<u64> {
    vec![0; CONFIG.memory_words()]
}

fn open<'a>(sim: &'a mut Sim, mem: &'a mut [u64]) -> Chan<'a> {
    Channel::open(sim, mem, CONFIG).expect("open")
}

/// The newest segment's header.
fn newest(sim: &mut Sim) -> SegmentHeader {
    (0..SEGMENTS as u32)
        .filter_map(|slot| match walk::read_header(sim, &GEO, slot).unwrap() {
            HeaderRead::Valid(h) => Some(h),
            _ => None,
        })
        .max_by_key(|h| h.seq)
        .expect("a segment")
}

/// Where the records of `seg` end: the offset after the last intact one, and how many there are.
fn end_of_records(sim: &mut Sim, seg: &SegmentHeader) -> (u64, u64) {
    let (mut offset, mut index) = (GEO.first_record(), 0);
    while let Some(r) = walk::read_record(sim, &GEO, seg, offset, Some(index)).unwrap() {
        offset += GEO.record_span(r.len as u64);
        index += 1;
    }
    (offset, index)
}

/// Writes, right after the newest segment's last record, a put of [`GHOST`] and a commit of it,
/// both with CRCs bound to `bind`, as a writer who computed them for that binding would have
/// left them there.
fn plant_ghost(sim: &mut Sim, bind: impl Fn(&SegmentHeader) -> u64) {
    let seg = newest(sim);
    let (at, index) = end_of_records(sim, &seg);
    let bind = bind(&seg);
    let put = RecordHeader::seal(
        bind,
        RecordKind::Put,
        index as u32,
        7,
        GHOST.len() as u32,
        |d| d.update(GHOST),
    );
    let pointer = Pointer {
        slot: GEO.slot_of(seg.seq),
        offset: at as u32,
    };
    let mut commit_payload = 0u64.to_le_bytes().to_vec();
    commit_payload.extend_from_slice(&pointer.encode());
    let commit = RecordHeader::seal(
        bind,
        RecordKind::PutCommit,
        index as u32 + 1,
        7,
        commit_payload.len() as u32,
        |d| d.update(&commit_payload),
    );
    let mut bytes = put.encode().to_vec();
    bytes.extend_from_slice(GHOST);
    bytes.extend_from_slice(&commit.encode());
    bytes.extend_from_slice(&commit_payload);
    let start = GEO.segment_start(GEO.slot_of(seg.seq)) + at;
    sim.overwrite(Region::Log, start as usize, &bytes);
}

/// A medium where one run committed `events` and closed.
fn with_events(events: &[&[u8]], configure: impl FnOnce(&mut Sim)) -> Sim {
    let (mut sim, mut mem) = (file_sim((SEGMENTS * SEGMENT_BYTES) as usize), memory());
    configure(&mut sim);
    put_all(&mut open(&mut sim, &mut mem), events);
    sim.reboot(0, CrashPolicy::KeepUnsynced);
    sim
}

/// The events the channel on `sim` holds after a restart.
fn queued(mut sim: Sim) -> Vec<Vec<u8>> {
    let mut mem = memory();
    let mut ch = open(&mut sim, &mut mem);
    peek_all(&mut ch)
}

/// Records an earlier lap of the ring wrote into the slot are stale by their sequence number
/// alone, even where every salt is 0: bound to the segment that held the slot one, two or a
/// thousand laps ago, none is taken. Bound to this segment's own binding, the same records
/// are.
#[test]
fn records_of_an_earlier_lap_past_the_end_are_stale() {
    for laps in [1, 2, 1000] {
        let mut sim = with_events(&[b"real-one"], |s| s.fix_salt(0));
        plant_ghost(&mut sim, |seg| seg.seq + SEGMENTS * laps);
        assert_eq!(queued(sim), v(&[b"real-one"]), "a record {laps} laps ahead");
    }
    for laps in [1, 2, 1000] {
        let mut sim = with_events(&[b"real-one"], |s| s.fix_salt(0));
        // Only the newest segment exists: plant records of a segment this slot held before.
        plant_ghost(&mut sim, |seg| seg.seq.wrapping_sub(SEGMENTS * laps));
        assert_eq!(queued(sim), v(&[b"real-one"]), "a record {laps} laps old");
    }
    let mut sim = with_events(&[b"real-one"], |s| s.fix_salt(0));
    plant_ghost(&mut sim, SegmentHeader::binding);
    assert_eq!(queued(sim), v(&[b"real-one", GHOST]), "the oracle");
}

/// A record image that an event body carried into the slot, computed by a writer who knew the
/// format and the segment's sequence number but not its salt, is not taken for a record. With
/// a salt of 0 (a storage that gives none) the same image would be.
#[test]
fn a_record_image_without_the_salt_never_passes() {
    let mut sim = with_events(&[b"real-one"], |_| {});
    let seg = newest(&mut sim);
    assert_ne!(
        seg.binding(),
        seg.seq,
        "the medium salts its segments: {seg:?}"
    );
    plant_ghost(&mut sim, |seg| seg.seq);
    assert_eq!(queued(sim), v(&[b"real-one"]));

    let mut sim = with_events(&[b"real-one"], |s| s.fix_salt(0));
    plant_ghost(&mut sim, |seg| seg.seq);
    assert_eq!(
        queued(sim),
        v(&[b"real-one", GHOST]),
        "unsalted, the image passes"
    );
}

/// Event bodies in `bytes` of rounds before `before` (written as `rNNN-i`).
fn older_rounds(bytes: &[u8], before: u32) -> usize {
    bytes
        .windows(5)
        .filter(|w| w[0] == b'r' && w[4] == b'-')
        .filter_map(|w| std::str::from_utf8(&w[1..4]).ok()?.parse::<u32>().ok())
        .filter(|&r| r < before)
        .count()
}

/// The ring goes round five times with events put and taken, every run ended by a random power
/// cut. Past the last record of a segment a run opened, beyond its first erase block (which the
/// opening erases), the slot still holds events of an earlier lap (nothing erases them), and
/// the queue holds exactly what was committed and not taken.
#[test]
fn reused_segments_keep_their_old_bytes_and_none_come_back() {
    let (mut sim, mut mem) = (file_sim((SEGMENTS * SEGMENT_BYTES) as usize), memory());
    let mut model: Vec<Vec<u8>> = Vec::new();
    let (mut opened, mut stale_seen) = (0, 0);
    for round in 0..120u32 {
        let mut ch = open(&mut sim, &mut mem);
        let events: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("r{round:03}-{i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        put_all(&mut ch, &refs);
        model.extend(events);
        // The queue stays within what `peek_all` reads (12 events).
        let n = if model.len() > 8 { 4 } else { 2 };
        let taken = take_n(&mut ch, n, true);
        assert_eq!(taken, model.drain(..n).collect::<Vec<_>>(), "round {round}");
        let opened_now = ch.stats().segments_opened;
        opened += opened_now;
        drop(ch);
        sim.reboot(round as u64, CrashPolicy::Random);
        // Acknowledged commits survive any cut.
        assert_eq!(queued(sim.clone()), model, "after round {round}");
        let seg = newest(&mut sim);
        let (end, _) = end_of_records(&mut sim, &seg);
        let start = GEO.segment_start(GEO.slot_of(seg.seq));
        let past = sim.image(Region::Log)[(start + end.max(256)) as usize..][..]
            .get(..(SEGMENT_BYTES - end.max(256)) as usize)
            .unwrap_or_default()
            .to_vec();
        // A lap is about 20 rounds, a segment 3: 10 rounds back is an earlier lap. (A run that goes on in
        // the newest segment clears what lies past its end first: only a segment this run
        // opened shows it.)
        if opened_now > 0 {
            stale_seen += older_rounds(&past, round.saturating_sub(10));
        }
    }
    assert!(
        opened > 4 * SEGMENTS,
        "{opened} segments: the ring went round"
    );
    assert!(stale_seen > 0, "the slots kept what earlier laps wrote");
    assert!(<Sim as Storage>::rewritable(&sim));
}
