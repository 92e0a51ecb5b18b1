//! The report of what an open's recovery found and did ([`Recovery`]), and the path it took
//! ([`RecoveryPath`]). The recovery itself is the channel's replay (`channel/replay/`).

/// How an open rebuilt the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RecoveryPath {
    /// The log was empty: a new channel.
    #[default]
    New,
    /// The newest checkpoint, then the log after it.
    Checkpoint,
    /// The newest checkpoint was bad or unfinished: the previous one (the backup), then the log
    /// after it.
    Backup,
    /// No checkpoint could be used: every retained segment of the log was replayed.
    FullReplay,
}

impl RecoveryPath {
    /// The path's short name, as reports print it: `new`, `checkpoint`, `backup`, `replay`.
    pub const fn name(self) -> &'static str {
        match self {
            RecoveryPath::New => "new",
            RecoveryPath::Checkpoint => "checkpoint",
            RecoveryPath::Backup => "backup",
            RecoveryPath::FullReplay => "replay",
        }
    }
}

/// What recovery found and did, with counters like Flume's replay report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Recovery {
    /// The path taken.
    pub path: RecoveryPath,
    /// Segments replayed.
    pub segments_replayed: u64,
    /// Valid records read.
    pub records_read: u64,
    /// `Put` records read.
    pub puts: u64,
    /// `PutCommit` records applied.
    pub put_commits: u64,
    /// `TakeCommit` records applied.
    pub take_commits: u64,
    /// Events added to the queue by put commits.
    pub events_committed: u64,
    /// Events removed from the queue by take commits.
    pub events_taken: u64,
    /// Put records no commit listed: rolled back, or still open at the crash.
    pub uncommitted_puts: u64,
    /// Put commits dropped because a put they list did not survive: they were in flight.
    pub torn_commits_dropped: u64,
    /// Events of acknowledged commits whose put record was damaged on the medium: lost to media
    /// decay, never delivered.
    pub corrupt_events_dropped: u64,
    /// Damaged records skipped in the middle of a segment (the next record was intact).
    pub corrupt_records_skipped: u64,
    /// Records lost between two segments: the write-order ids jump. Only media damage causes it.
    pub records_lost: u64,
    /// Pointers in take commits that matched no queued event (their puts were reclaimed).
    pub unmatched_takes: u64,
    /// Marks that replay applied (with their commits).
    pub marks_applied: u64,
    /// Marks loaded from the checkpoint used.
    pub checkpoint_marks: u64,
    /// Events in the queue after recovery.
    pub events: u64,
    /// The number of the checkpoint used (0 if none).
    pub checkpoint: u64,
    /// Events the checkpoint held.
    pub checkpoint_events: u64,
    /// The oldest segment still in the log, and the newest.
    pub first_segment: u64,
    /// See `first_segment`.
    pub last_segment: u64,
    /// True if the newest checkpoint's complete mark stood over entries that failed their
    /// CRC, so an older checkpoint (or the whole log) was used. Recovery loses nothing by it,
    /// but a power cut alone never leaves one (the entries are synced before the complete
    /// mark is written): it means media damage, or writes that reached the medium out of the
    /// order the channel synced them in. The power-cut tests require it false.
    pub newest_checkpoint_damaged: bool,
    /// True if the open wrote a checkpoint to make this recovery's verdict final (see
    /// [`Channel::open`](crate::Channel::open)).
    pub checkpointed: bool,
    /// Sealed records, seal records and checkpoints whose CRC held but whose authentication
    /// tag did not: altered on purpose. Each is treated as damaged.
    pub authentication_failures: u64,
    /// Segments of the log that are sealed (encrypted).
    pub sealed_segments: u64,
    /// Queued events whose bytes cannot be read: their segment is gone (its slot holds no valid
    /// segment header, or the header of another segment: a log file deleted, replaced, or
    /// damaged at its start), or their put record is damaged. An open reads the highest queued
    /// record of each run of queued events in a segment (so a log file cut short or zeroed from
    /// some point on is found), and the rest of a run only when that one is damaged;
    /// [`Channel::check_queued_events`](crate::Channel::check_queued_events) reads every one.
    /// See [`Channel::drop_lost_events`](crate::Channel::drop_lost_events).
    pub events_in_lost_segments: u64,
    /// The slot of the first such segment (meaningful when `events_in_lost_segments` > 0).
    pub first_lost_slot: u32,
}
