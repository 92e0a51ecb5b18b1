//! An offline walk over every byte a channel keeps: segment headers, every record, both
//! checkpoint slots. `verify`, `dump`, `stats` and `repair` are built on it.
//!
//! It reads headers and records through the core's one reader of the format
//! (`sluicegate_core::walk`), but unlike replay it does not stop at the first damaged record of
//! a segment: it searches the rest of the segment for the next intact record, so a report can
//! say how much lies behind the damage, and `repair` can make replay step over it.
//!
//! What counts as corruption and what as the ordinary trace of a power cut:
//! - a damaged record with intact records after it in the same segment, or in a segment that
//!   the same run went on to write, is corruption (the run had synced it: media damage);
//! - a damaged record with nothing intact after it, at the end of a run (the next segment, if
//!   any, was opened by a later run), is a torn tail: what a power cut leaves; recovery ignores
//!   it; a warning, but in a segment whose body was not erased (`UNERASED`, files), where what
//!   follows the records is an earlier lap's: nothing;
//! - a segment cut off from the log by a damaged header between it and the newest segment is
//!   corruption (its records are no longer replayed);
//! - an intact record or header that this build cannot read (unknown kind, a pointer outside
//!   the log, a header in the wrong slot) is corruption: recovery refuses to open.

use std::collections::HashSet;

use serde::Serialize;
use sluicegate_core::checkpoint::{Complete, SlotLayout, Started, COMPLETE_BYTES, STARTED_BYTES};
use sluicegate_core::record::{
    align_up, decode_mark_prefix, Pointer, RecordHeader, RecordKind, SealRecord, SegmentHeader,
    COMMIT_PREFIX_BYTES, CRC32C, MARK_PREFIX_BYTES, POINTER_BYTES, RECORD_HEADER_BYTES,
    SEAL_PAYLOAD_BYTES, SEGMENT_FLAG_OPENED, SEGMENT_FLAG_SEALED, SEGMENT_FLAG_UNERASED,
    SEGMENT_HEADER_BYTES,
};
use sluicegate_core::seal::TAG_BYTES;
use sluicegate_core::walk::{self, Geometry, HeaderRead};
use sluicegate_core::{Region, Storage};
use sluicegate_file::{FileError, SnapshotStorage};

/// Records are aligned to the file adapter's write size.
const ALIGN: u64 = <SnapshotStorage as Storage>::WRITE_SIZE as u64;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data damaged or unreadable: `verify` exits 1.
    Corruption,
    /// The normal trace of a power cut or an interrupted checkpoint.
    Warning,
}

/// One thing the scan found wrong, and where.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The file.
    pub file: String,
    /// The byte offset in the file.
    pub offset: u64,
    pub what: String,
    /// What repair can do about it.
    #[serde(skip)]
    pub fix: Option<Fix>,
}

/// A change to a file that lets replay get past a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Rewrite the length of the damaged record at `offset` of segment `slot` so that replay's
    /// skip lands on the intact record at `next`; the record stays damaged (its CRC fails).
    Bridge { slot: usize, offset: u64, next: u64 },
    /// Spoil the CRC of the intact but unreadable record at `offset` of segment `slot`, so
    /// replay treats it as damaged and steps over it.
    Spoil { slot: usize, offset: u64 },
    /// Move segment `slot` out of the log (its header is intact but misplaced or unreadable).
    MoveSegment { slot: usize },
}

/// A record as found.
#[derive(Debug, Clone, Serialize)]
pub struct RecordInfo {
    pub slot: usize,
    pub seq: u64,
    pub offset: u64,
    pub kind: &'static str,
    pub len: u32,
    pub wid: u64,
    pub txn: u32,
    /// For commits: the durable mark and the pointers as `slot:offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced_wid: Option<u64>,
    /// For marked commits: the mark's stream and its bytes, escaped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "pointers_as_text"
    )]
    pub pointers: Vec<Pointer>,
    /// For puts: the body, as text with escapes, cut at 64 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A segment as found.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    pub slot: usize,
    pub file: Option<String>,
    /// "absent", "unused", "invalid", "unsupported" or "valid".
    pub header: &'static str,
    pub seq: Option<u64>,
    /// The salt bound into the segment's record CRCs, if the segment is salted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<u32>,
    pub base_wid: Option<u64>,
    pub opened_by_a_run: bool,
    pub records: u64,
    pub puts: u64,
    pub put_commits: u64,
    pub take_commits: u64,
    /// Where the records end.
    pub end: u64,
    /// True if the segment is in the log recovery reads.
    pub in_log: bool,
}

impl SegmentInfo {
    /// What the segment's record CRCs bind (`SegmentHeader::binding`), if its header is valid.
    pub fn binding(&self) -> Option<u64> {
        self.seq
            .map(|seq| sluicegate_core::record::binding(seq, self.salt.unwrap_or(0)))
    }
}

/// A checkpoint slot as found.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub region: &'static str,
    pub file: Option<String>,
    /// "absent", "empty", "invalid", "unsupported", "incomplete" or "valid".
    pub state: &'static str,
    pub ckpt_seq: Option<u64>,
    pub entries: Option<u64>,
    #[serde(skip)]
    pub max_entries: Option<u64>,
    pub replay_seq: Option<u64>,
    pub replay_offset: Option<u32>,
    pub replay_wid: Option<u64>,
    /// True for the newest valid checkpoint.
    pub newest: bool,
    /// True if the entries are sealed (encrypted).
    pub sealed: bool,
}

/// Everything the scan found.
#[derive(Debug, Default, Serialize)]
pub struct Scan {
    pub segments: Vec<SegmentInfo>,
    pub slots: Vec<SlotInfo>,
    pub findings: Vec<Finding>,
    pub records: u64,
    pub bytes_scanned: u64,
}

impl Scan {
    pub fn corruptions(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Corruption)
            .count()
    }

    /// The newest valid checkpoint's slot, if any.
    pub fn newest_slot(&self) -> Option<&SlotInfo> {
        self.slots.iter().find(|s| s.newest)
    }
}

/// A pointer as `slot:offset`.
pub fn pointer_text(p: &Pointer) -> String {
    format!("{}:{}", p.slot, p.offset)
}

fn pointers_as_text<S: serde::Serializer>(ps: &[Pointer], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(pointer_text))
}

fn kind_name(k: RecordKind) -> &'static str {
    match k {
        RecordKind::Put => "put",
        RecordKind::PutCommit => "put-commit",
        RecordKind::TakeCommit => "take-commit",
        RecordKind::Seal => "seal",
        RecordKind::MarkedPutCommit => "marked-put-commit",
        RecordKind::MarkedTakeCommit => "marked-take-commit",
    }
}

/// Text with non-printable bytes escaped, at most `max` bytes of the input.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut s: String = bytes[..bytes.len().min(max)]
        .escape_ascii()
        .map(char::from)
        .collect();
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

struct Reader<'a> {
    st: &'a mut SnapshotStorage,
    geo: Geometry,
}

impl Reader<'_> {
    fn log(&mut self, slot: usize, offset: u64, buf: &mut [u8]) -> Result<(), FileError> {
        self.st.read(
            Region::Log,
            self.geo.segment_start(slot as u32) + offset,
            buf,
        )
    }

    /// The intact record at `offset` of segment `h` (the core's check), with its payload read
    /// into `payload`, if there is one.
    fn record_at(
        &mut self,
        h: &SegmentHeader,
        offset: u64,
        payload: &mut Vec<u8>,
    ) -> Result<Option<RecordHeader>, FileError> {
        let Some(r) = walk::read_record(self.st, &self.geo, h, offset, None)? else {
            return Ok(None);
        };
        payload.resize(r.len as usize, 0);
        let slot = self.geo.slot_of(h.seq) as usize;
        self.log(slot, offset + RECORD_HEADER_BYTES as u64, payload)?;
        Ok(Some(r))
    }

    fn is_erased(&mut self, slot: usize, from: u64, to: u64) -> Result<bool, FileError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = from;
        while at < to {
            let n = (to - at).min(buf.len() as u64) as usize;
            self.log(slot, at, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }
}

/// Walks everything. `on_record` sees every intact record in log order of each segment.
pub fn scan(
    st: &mut SnapshotStorage,
    mut on_record: impl FnMut(&RecordInfo, &[u8]),
) -> Result<Scan, FileError> {
    let n = st.segments();
    let seg_bytes = st.segment_bytes();
    let mut out = Scan::default();
    let name = |st: &SnapshotStorage, slot: usize| {
        st.segment_path(slot)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("segment {slot}"))
    };

    // Headers first: which segments form the log recovery reads.
    let geo = Geometry::new(n as u64, seg_bytes, ALIGN as usize);
    let mut headers: Vec<Option<SegmentHeader>> = Vec::with_capacity(n);
    for slot in 0..n {
        let present = st.segment_path(slot).is_some();
        let mut hb = [0u8; SEGMENT_HEADER_BYTES];
        st.read(Region::Log, geo.segment_start(slot as u32), &mut hb)?;
        let read = walk::read_header(st, &geo, slot as u32)?;
        let (state, h) = match read {
            _ if !present => ("absent", None),
            HeaderRead::Valid(h) => ("valid", Some(h)),
            HeaderRead::Unsupported(v) => {
                out.findings.push(Finding {
                    severity: Severity::Corruption,
                    file: name(st, slot),
                    offset: 0,
                    what: format!(
                        "segment header of format version {v}: this build reads version 1"
                    ),
                    fix: None,
                });
                ("unsupported", None)
            }
            HeaderRead::OtherFormat(_) => {
                out.findings.push(Finding {
                    severity: Severity::Corruption,
                    file: name(st, slot),
                    offset: 0,
                    what: "segment header of a compact log (Config::with_compact_records, for flash): this tool reads the file adapter's logs, which are never compact".into(),
                    fix: None,
                });
                ("unsupported", None)
            }
            HeaderRead::Invalid if hb.iter().all(|&b| b == 0) => ("unused", None),
            HeaderRead::Invalid => ("invalid", None),
            HeaderRead::Misplaced(h) | HeaderRead::OtherSize(h) => {
                out.findings.push(Finding {
                    severity: Severity::Corruption,
                    file: name(st, slot),
                    offset: 0,
                    what: format!(
                        "intact segment header for segment {} of {} bytes in slot {slot}: it belongs elsewhere (recovery refuses it)",
                        h.seq, h.segment_bytes
                    ),
                    fix: Some(Fix::MoveSegment { slot }),
                });
                ("valid", None)
            }
        };
        headers.push(h);
        out.segments.push(SegmentInfo {
            slot,
            file: st.segment_path(slot).map(|p| p.display().to_string()),
            header: state,
            seq: h.map(|h| h.seq),
            salt: h
                .filter(|h| h.flags & SEGMENT_FLAG_UNERASED != 0)
                .map(|h| h.crc_salt()),
            base_wid: h.map(|h| h.base_wid),
            opened_by_a_run: h.is_some_and(|h| h.flags & SEGMENT_FLAG_OPENED != 0),
            records: 0,
            puts: 0,
            put_commits: 0,
            take_commits: 0,
            end: 0,
            in_log: false,
        });
    }
    let by_seq = |seq: u64| {
        let slot = (seq % n as u64) as usize;
        headers[slot].filter(|h| h.seq == seq).map(|h| (slot, h))
    };
    let newest = headers.iter().flatten().map(|h| h.seq).max();
    let mut oldest = newest;
    if let Some(m) = newest {
        let mut s = m;
        while s > 0 && m - (s - 1) < n as u64 && by_seq(s - 1).is_some() {
            s -= 1;
        }
        oldest = Some(s);
        for h in headers.iter().flatten() {
            if h.seq < s {
                out.findings.push(Finding {
                    severity: Severity::Corruption,
                    file: name(st, (h.seq % n as u64) as usize),
                    offset: 0,
                    what: format!(
                        "segment {} is cut off from the log (segment {} between it and the newest, {m}, has no valid header): recovery does not read it",
                        h.seq,
                        s - 1
                    ),
                    fix: None,
                });
            }
        }
    }

    // Then every record of every segment in the log, oldest first.
    let mut intact_puts: HashSet<Pointer> = HashSet::new();
    let mut payload = Vec::new();
    if let (Some(first), Some(last)) = (oldest, newest) {
        let mut rd = Reader { st, geo };
        for seq in first..=last {
            let Some((slot, h)) = by_seq(seq) else {
                continue;
            };
            let file = name(rd.st, slot);
            out.segments[slot].in_log = true;
            // The next segment bounds this one's records if a later run opened it.
            let next = by_seq(seq + 1);
            let run_ends_here = next.is_none_or(|(_, nh)| nh.flags & SEGMENT_FLAG_OPENED != 0);
            let limit = next.map(|(_, nh)| nh.base_wid);
            let mut at = geo.first_record();
            let mut index: u64 = 0;
            loop {
                let wid = h.base_wid + index;
                if limit.is_some_and(|l| wid >= l) {
                    break;
                }
                if at + RECORD_HEADER_BYTES as u64 > seg_bytes {
                    break;
                }
                let mut hb = [0u8; RECORD_HEADER_BYTES];
                rd.log(slot, at, &mut hb)?;
                if hb.iter().all(|&b| b == 0) && rd.is_erased(slot, at, seg_bytes)? {
                    break;
                }
                match rd.record_at(&h, at, &mut payload)? {
                    Some(r) if r.wid_delta as u64 == index => {
                        let sealed = h.flags & SEGMENT_FLAG_SEALED != 0;
                        let info = record_info(
                            slot, seq, at, wid, &r, &payload, n, seg_bytes, sealed, index,
                        );
                        match &info {
                            Ok(info) => {
                                let seg = &mut out.segments[slot];
                                seg.records += 1;
                                match info.kind {
                                    "put" => {
                                        seg.puts += 1;
                                        intact_puts.insert(Pointer {
                                            slot: slot as u32,
                                            offset: at as u32,
                                        });
                                    }
                                    "put-commit" | "marked-put-commit" => seg.put_commits += 1,
                                    "seal" => {}
                                    _ => seg.take_commits += 1,
                                }
                                out.records += 1;
                                on_record(info, &payload);
                                if info.kind.ends_with("put-commit") {
                                    // A put in a segment older than the log's oldest was
                                    // reclaimed with its events (recovery skips it too).
                                    let live = |p: &&Pointer| geo.seq_of_slot(p.slot, seq) >= first;
                                    for p in info.pointers.iter().filter(live) {
                                        if !intact_puts.contains(p) {
                                            out.findings.push(Finding {
                                                severity: Severity::Warning,
                                                file: file.clone(),
                                                offset: at,
                                                what: format!(
                                                    "put commit (write-order id {wid}) lists {}, which is not an intact put record: recovery drops that event",
                                                    pointer_text(p)
                                                ),
                                                fix: None,
                                            });
                                        }
                                    }
                                }
                            }
                            Err(what) => out.findings.push(Finding {
                                severity: Severity::Corruption,
                                file: file.clone(),
                                offset: at,
                                what: what.clone(),
                                fix: Some(Fix::Spoil { slot, offset: at }),
                            }),
                        }
                        at = align_up(at + RECORD_HEADER_BYTES as u64 + r.len as u64, ALIGN);
                        index += 1;
                    }
                    _ => {
                        // Damaged. Search the rest of the segment for the next intact record.
                        let found = walk::next_intact(rd.st, &geo, &h, at + ALIGN, index)?
                            .map(|(next_at, r)| (next_at, r.wid_delta as u64));
                        match found {
                            Some((next_at, delta)) => {
                                let lost = delta - index;
                                // Replay steps over one damaged record if its length leads to
                                // the next one; `repair` makes it so when it does not.
                                let mut hb = [0u8; RECORD_HEADER_BYTES];
                                rd.log(slot, at, &mut hb)?;
                                let len = RecordHeader::decode(&hb).len as u64;
                                let leads = align_up(at + RECORD_HEADER_BYTES as u64 + len, ALIGN)
                                    == next_at;
                                out.findings.push(Finding {
                                    severity: Severity::Corruption,
                                    file: file.clone(),
                                    offset: at,
                                    what: format!(
                                        "damaged record (write-order id {wid}): {lost} record(s) unreadable before the intact record at offset {next_at}"
                                    ),
                                    fix: (lost == 1 && !leads).then_some(Fix::Bridge {
                                        slot,
                                        offset: at,
                                        next: next_at,
                                    }),
                                });
                                at = next_at;
                                index = delta;
                            }
                            None if run_ends_here && h.flags & SEGMENT_FLAG_UNERASED != 0 => {
                                // A segment opened without erasing its body: what follows its
                                // last record is an earlier lap's, or a torn write; recovery
                                // ignores both, and neither is a finding.
                                break;
                            }
                            None => {
                                let (severity, what) = if run_ends_here {
                                    (
                                        Severity::Warning,
                                        format!(
                                            "torn tail: the record with write-order id {wid} is incomplete and nothing intact follows (a power cut during a write; recovery ignores it)"
                                        ),
                                    )
                                } else {
                                    (
                                        Severity::Corruption,
                                        format!(
                                            "damaged record (write-order id {wid}) in the middle of a run; the rest of the segment is unreadable"
                                        ),
                                    )
                                };
                                out.findings.push(Finding {
                                    severity,
                                    file: file.clone(),
                                    offset: at,
                                    what,
                                    fix: None,
                                });
                                break;
                            }
                        }
                    }
                }
            }
            out.segments[slot].end = at;
            out.bytes_scanned += at;
        }
    }

    // Last, the checkpoint slots.
    out.slots = slots(st)?;
    for s in &out.slots {
        let started_newer = s.ckpt_seq > out.newest_slot().and_then(|n| n.ckpt_seq);
        match s.state {
            "unsupported" => out.findings.push(Finding {
                severity: Severity::Corruption,
                file: s.file.clone().unwrap_or_default(),
                offset: 0,
                what: "checkpoint of another format version: recovery refuses it".into(),
                fix: None,
            }),
            "incomplete" | "invalid" if started_newer || s.state == "invalid" => {
                out.findings.push(Finding {
                    severity: Severity::Warning,
                    file: s.file.clone().unwrap_or_default(),
                    offset: 0,
                    what: format!(
                        "checkpoint slot is {} (an interrupted checkpoint or a damaged one): recovery uses the other slot or replays the log",
                        s.state
                    ),
                    fix: None,
                })
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Decodes an intact record; `Err` for one recovery would refuse.
#[allow(clippy::too_many_arguments)]
fn record_info(
    slot: usize,
    seq: u64,
    offset: u64,
    wid: u64,
    h: &RecordHeader,
    payload: &[u8],
    segments: usize,
    seg_bytes: u64,
    sealed: bool,
    index: u64,
) -> Result<RecordInfo, String> {
    let kind = RecordKind::from_u8(h.kind).ok_or_else(|| {
        format!(
            "intact record of unknown kind {} (recovery refuses it)",
            h.kind
        )
    })?;
    let mut info = RecordInfo {
        slot,
        seq,
        offset,
        kind: kind_name(kind),
        len: h.len,
        wid,
        txn: h.txn,
        synced_wid: None,
        mark: None,
        pointers: Vec::new(),
        body: None,
    };
    if (kind == RecordKind::Seal) != (sealed && index == 0) {
        return Err("intact seal record out of place (recovery refuses it)".into());
    }
    if kind == RecordKind::Seal {
        let seal = <&[u8; SEAL_PAYLOAD_BYTES]>::try_from(payload)
            .ok()
            .and_then(SealRecord::decode)
            .ok_or("intact seal record that does not decode (recovery refuses it)")?;
        info.body = Some(format!("key {}, {}", seal.key, seal.algorithm.name()));
        return Ok(info);
    }
    let prefix = if kind.is_marked() {
        COMMIT_PREFIX_BYTES + MARK_PREFIX_BYTES
    } else {
        COMMIT_PREFIX_BYTES
    };
    if sealed {
        // Without the key the text is opaque; its CRC still proves it intact.
        let text = payload.len().saturating_sub(TAG_BYTES);
        if kind != RecordKind::Put
            && (text < prefix || !(text - prefix).is_multiple_of(POINTER_BYTES))
        {
            return Err("intact commit record of a malformed length (recovery refuses it)".into());
        }
        info.body = Some(format!("(sealed, {text} bytes)"));
        return Ok(info);
    }
    if kind == RecordKind::Put {
        info.body = Some(escape(payload, 64));
        return Ok(info);
    }
    if payload.len() < prefix || !(payload.len() - prefix).is_multiple_of(POINTER_BYTES) {
        return Err("intact commit record of a malformed length (recovery refuses it)".into());
    }
    info.synced_wid = Some(u64::from_le_bytes(
        payload[..8].try_into().unwrap_or_default(),
    ));
    let mut pointers = &payload[COMMIT_PREFIX_BYTES..];
    if kind.is_marked() {
        let head = <&[u8; MARK_PREFIX_BYTES]>::try_from(&pointers[..MARK_PREFIX_BYTES])
            .ok()
            .and_then(decode_mark_prefix);
        let Some((stream, len)) = head else {
            return Err("intact commit with a malformed mark (recovery refuses it)".into());
        };
        let end = MARK_PREFIX_BYTES + (len as usize).next_multiple_of(8);
        if end > pointers.len() {
            return Err("intact commit with a malformed mark (recovery refuses it)".into());
        }
        let bytes = &pointers[MARK_PREFIX_BYTES..MARK_PREFIX_BYTES + len as usize];
        info.mark = Some(format!("stream {stream}: {}", escape(bytes, 64)));
        pointers = &pointers[end..];
    }
    let here = slot as u64 * seg_bytes + offset;
    for raw in pointers.chunks_exact(POINTER_BYTES) {
        let p = Pointer::decode(raw);
        let at = p.slot as u64 * seg_bytes + p.offset as u64;
        if p.slot as usize >= segments || p.offset as u64 >= seg_bytes {
            return Err(format!(
                "intact commit lists {}:{}, outside the log (recovery refuses it)",
                p.slot, p.offset
            ));
        }
        if kind.is_put_commit() && p.slot as usize == slot && at >= here {
            return Err(format!(
                "intact commit lists {}:{}, at or after itself (recovery refuses it)",
                p.slot, p.offset
            ));
        }
        info.pointers.push(p);
    }
    Ok(info)
}

/// Both checkpoint slots, the newest valid one flagged.
pub fn slots(st: &mut SnapshotStorage) -> Result<Vec<SlotInfo>, FileError> {
    let mut slots = Vec::new();
    for region in [Region::Checkpoint, Region::Backup] {
        slots.push(read_slot(st, region)?);
    }
    let newest_valid = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state == "valid")
        .max_by_key(|(_, s)| s.ckpt_seq)
        .map(|(i, _)| i);
    if let Some(i) = newest_valid {
        slots[i].newest = true;
    }
    Ok(slots)
}

/// The entries (queued events, as pointers) of a valid slot.
pub fn slot_entries(st: &mut SnapshotStorage, slot: &SlotInfo) -> Result<Vec<Pointer>, FileError> {
    let region = if slot.region == "checkpoint" {
        Region::Checkpoint
    } else {
        Region::Backup
    };
    let (Some(n), Some(max)) = (slot.entries, slot.max_entries) else {
        return Ok(Vec::new());
    };
    if slot.sealed {
        // The entries are ciphertext; listing them needs the key.
        return Ok(Vec::new());
    }
    let layout = SlotLayout::new(max, ALIGN, false);
    let mut raw = vec![0u8; (n * POINTER_BYTES as u64) as usize];
    st.read(region, layout.entries_at, &mut raw)?;
    Ok(raw
        .chunks_exact(POINTER_BYTES)
        .map(Pointer::decode)
        .collect())
}

fn read_slot(st: &mut SnapshotStorage, region: Region) -> Result<SlotInfo, FileError> {
    let mut info = SlotInfo {
        region: if region == Region::Checkpoint {
            "checkpoint"
        } else {
            "backup"
        },
        file: st.slot_path(region).map(|p| p.display().to_string()),
        state: "absent",
        ckpt_seq: None,
        entries: None,
        max_entries: None,
        replay_seq: None,
        replay_offset: None,
        replay_wid: None,
        newest: false,
        sealed: false,
    };
    if info.file.is_none() {
        return Ok(info);
    }
    let mut sb = [0u8; STARTED_BYTES];
    st.read(region, 0, &mut sb)?;
    let started: Started = match Started::decode(&sb) {
        None if sb.iter().all(|&b| b == 0) => {
            info.state = "empty";
            return Ok(info);
        }
        None => {
            info.state = "invalid";
            return Ok(info);
        }
        Some(Err(_)) => {
            info.state = "unsupported";
            return Ok(info);
        }
        Some(Ok(s)) => s,
    };
    info.ckpt_seq = Some(started.ckpt_seq);
    info.max_entries = Some(started.max_entries);
    info.replay_seq = Some(started.from.seq);
    info.replay_offset = Some(started.from.offset);
    info.replay_wid = Some(started.from.wid);
    info.state = "incomplete";
    info.sealed = started.sealed();
    let layout = SlotLayout::new(started.max_entries, ALIGN, started.sealed());
    if layout.end > st.capacity(region) {
        return Ok(info);
    }
    let mut cb = [0u8; COMPLETE_BYTES];
    st.read(region, layout.complete_at, &mut cb)?;
    let Some(c) = Complete::decode(&cb) else {
        return Ok(info);
    };
    if c.ckpt_seq != started.ckpt_seq || c.entries > started.max_entries {
        return Ok(info);
    }
    let mut digest = CRC32C.digest();
    let mut buf = vec![0u8; 64 * 1024];
    // The marks area (after the complete mark) comes first in the CRC.
    let marks = c.marks_bytes as u64;
    if layout.end + marks > st.capacity(region) {
        return Ok(info);
    }
    let mut done = 0u64;
    while done < marks {
        let k = (marks - done).min(buf.len() as u64) as usize;
        st.read(region, layout.end + done, &mut buf[..k])?;
        digest.update(&buf[..k]);
        done += k as u64;
    }
    let mut done = 0u64;
    let total = c.entries * POINTER_BYTES as u64
        + if started.sealed() {
            TAG_BYTES as u64
        } else {
            0
        };
    while done < total {
        let k = (total - done).min(buf.len() as u64) as usize;
        st.read(region, layout.entries_at + done, &mut buf[..k])?;
        digest.update(&buf[..k]);
        done += k as u64;
    }
    if digest.finalize() == c.entries_crc {
        info.state = "valid";
        info.entries = Some(c.entries);
    }
    Ok(info)
}
