//! The systems measured on the server: Sluicegate's file channel, the disk's ceiling, and the
//! peers, behind one interface. Every `put` and `take` is one transaction that is durable when
//! it returns.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sluicegate_file::{
    new_key_line, write_secret_file, EncryptionConfig, FileChannel, FileChannelConfig, KeyConfig,
};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// A durable queue under test. Shared by all the threads of a scenario.
pub trait System: Sync {
    /// Puts `events` in one transaction, durable when this returns.
    fn put(&self, events: &[&[u8]]) -> Result<()>;
    /// Takes up to `n` events, oldest first, in one transaction, durable when this returns.
    /// Returns how many and their total length.
    fn take(&self, n: usize) -> Result<(usize, usize)>;
}

/// Which system; also the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ceiling,
    Sluicegate,
    /// Sluicegate with encryption at rest (a raw key file, XChaCha20-Poly1305).
    SluicegateSealed,
    QueueFile,
    Redb,
    Sqlite,
    Fjall,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Ceiling,
        Kind::Sluicegate,
        Kind::SluicegateSealed,
        Kind::QueueFile,
        Kind::Redb,
        Kind::Sqlite,
        Kind::Fjall,
    ];
    pub const PEERS: [Kind; 4] = [Kind::QueueFile, Kind::Redb, Kind::Sqlite, Kind::Fjall];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Sluicegate => "sluicegate",
            Kind::SluicegateSealed => "sluicegate-sealed",
            Kind::QueueFile => "queue-file",
            Kind::Redb => "redb",
            Kind::Sqlite => "sqlite",
            Kind::Fjall => "fjall",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Opens a new, empty instance in `dir` (which exists and is empty).
    pub fn open(self, dir: &Path, threads: usize) -> Result<Box<dyn System>> {
        Ok(match self {
            Kind::Ceiling => Box::new(Ceiling::open(dir)?),
            Kind::Sluicegate => Box::new(Sluicegate::open(dir, threads, false)?),
            Kind::SluicegateSealed => Box::new(Sluicegate::open(dir, threads, true)?),
            Kind::QueueFile => Box::new(QueueFilePeer::open(dir)?),
            Kind::Redb => Box::new(RedbPeer::open(dir)?),
            Kind::Sqlite => Box::new(SqlitePeer::open(dir)?),
            Kind::Fjall => Box::new(FjallPeer::open(dir)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Sluicegate

/// The configuration the benchmark runs Sluicegate with: the defaults (1,000,000 events,
/// 128 MiB log files, a checkpoint every 30 s in the background), but transactions up to the
/// largest batch and room for every thread's transaction.
pub fn sluicegate_config(dir: &Path, threads: usize) -> FileChannelConfig {
    let mut c = FileChannelConfig::in_dir(dir);
    c.transaction_capacity = 1_000;
    c.max_transactions = (2 * threads + 2).min(254) as u16;
    c.max_event_bytes = 64 << 10;
    // The benchmark directory is watched by the harness itself.
    c.minimum_required_space_bytes = 0;
    c
}

pub struct Sluicegate {
    channel: FileChannel,
}

impl Sluicegate {
    /// Opens the channel in `dir`; `sealed`: with a new random key in `dir/bench.key`.
    fn open(dir: &Path, threads: usize, sealed: bool) -> Result<Self> {
        let mut config = sluicegate_config(dir, threads);
        if sealed {
            let key_file = dir.join("bench.key");
            write_secret_file(&key_file, &new_key_line()?)?;
            config.encryption = EncryptionConfig {
                active_key: Some("bench".into()),
                keys: vec![KeyConfig {
                    id: 1,
                    alias: "bench".into(),
                    key_file,
                    password_file: None,
                }],
                ..EncryptionConfig::default()
            };
        }
        Ok(Sluicegate {
            channel: FileChannel::open(config)?,
        })
    }
}

impl Sluicegate {
    /// A plaintext channel in `dir`, for the sections that look inside it.
    pub fn open_plain(dir: &Path, threads: usize) -> Result<Self> {
        Sluicegate::open(dir, threads, false)
    }

    /// The channel under test.
    pub fn channel(&self) -> &FileChannel {
        &self.channel
    }
}

impl System for Sluicegate {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let mut tx = self.channel.begin()?;
        for e in events {
            tx.put(e)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let mut buf = vec![0u8; 64 << 10];
        let mut tx = self.channel.begin()?;
        let (mut count, mut bytes) = (0, 0);
        while count < n {
            match tx.take(&mut buf)? {
                Some(len) => {
                    count += 1;
                    bytes += len;
                }
                None => break,
            }
        }
        tx.commit()?;
        Ok((count, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling

/// Bytes Sluicegate appends to its log for a put commit of `sizes`: one record per event and a
/// commit record listing them (docs/format.md), 8-byte aligned on the file adapter.
pub fn put_commit_bytes(sizes: impl Iterator<Item = usize>) -> u64 {
    let mut n = 0u64;
    let mut bytes = 0u64;
    for s in sizes {
        n += 1;
        bytes += record_bytes(s as u64);
    }
    bytes + commit_bytes(n)
}

/// Bytes of a commit record for `n` events (a take commit writes only this).
pub fn commit_bytes(n: u64) -> u64 {
    record_bytes(
        sluicegate_core::record::COMMIT_PREFIX_BYTES as u64
            + n * sluicegate_core::record::POINTER_BYTES as u64,
    )
}

fn record_bytes(payload: u64) -> u64 {
    sluicegate_core::record::align_up(
        sluicegate_core::record::RECORD_HEADER_BYTES as u64 + payload,
        8,
    )
}

/// What the disk allows: each commit appends the bytes Sluicegate would append for it, in one
/// `pwrite`, to a preallocated file (as Sluicegate's log files are), then `fdatasync`s it. A
/// take reads the events it takes back from the file (one `pread` per run of events one put
/// wrote together), then appends and syncs what Sluicegate's take commit would: the least a
/// queue on this disk can do to deliver them durably.
pub struct Ceiling {
    file: File,
    next: AtomicU64,
    /// Where each queued event's bytes are (offset, length), oldest first.
    queued: Mutex<VecDeque<(u64, u32)>>,
    /// Off only for the control of `cargo xtask bench --syncs`, which must count no syncs.
    sync: bool,
}

/// The ceiling's file wraps around at this size (a take may then read bytes a later put
/// wrote over: the ceiling measures the work, not the contents).
const CEILING_FILE_BYTES: u64 = 64 << 20;

impl Ceiling {
    /// The ceiling without its `fdatasync`: not durable, and never measured. It is the control
    /// that shows the sync count can tell a system that does not sync.
    pub fn unsynced(dir: &Path) -> Result<Self> {
        let mut c = Ceiling::open(dir)?;
        c.sync = false;
        Ok(c)
    }

    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("ceiling.dat");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < CEILING_FILE_BYTES {
            file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        file.sync_all()?;
        Ok(Ceiling {
            file,
            next: AtomicU64::new(0),
            queued: Mutex::new(VecDeque::new()),
            sync: true,
        })
    }

    /// Writes `buf` where the next commit goes, syncs it, and returns where it went.
    fn append(&self, buf: &[u8]) -> Result<u64> {
        let len = buf.len() as u64;
        let at = self.next.fetch_add(len, Ordering::Relaxed) % CEILING_FILE_BYTES;
        let at = if at + len > CEILING_FILE_BYTES { 0 } else { at };
        self.file.write_all_at(buf, at)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(at)
    }
}

impl System for Ceiling {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let len = put_commit_bytes(events.iter().map(|e| e.len()));
        let at = self.append(&vec![0xA5u8; len as usize])?;
        // Where each event's payload lies in that write, as Sluicegate lays out its records.
        let mut queued = self.queued.lock().unwrap();
        let mut offset = at;
        for e in events {
            let payload = offset + sluicegate_core::record::RECORD_HEADER_BYTES as u64;
            queued.push_back((payload, e.len() as u32));
            offset += record_bytes(e.len() as u64);
        }
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let taking: Vec<(u64, u32)> = {
            let mut queued = self.queued.lock().unwrap();
            let n = n.min(queued.len());
            queued.drain(..n).collect()
        };
        if taking.is_empty() {
            return Ok((0, 0));
        }
        // One read per run of events that lie one after the other (one put's), headers and
        // all, into one buffer.
        let mut buf = Vec::new();
        let mut bytes = 0;
        let mut i = 0;
        while i < taking.len() {
            let (from, _) = taking[i];
            let mut end = from + u64::from(taking[i].1);
            let mut j = i + 1;
            while j < taking.len()
                && taking[j].0
                    == sluicegate_core::record::align_up(end, 8)
                        + sluicegate_core::record::RECORD_HEADER_BYTES as u64
            {
                end = taking[j].0 + u64::from(taking[j].1);
                j += 1;
            }
            buf.resize((end - from) as usize, 0);
            self.file.read_exact_at(&mut buf, from)?;
            bytes += taking[i..j].iter().map(|e| e.1 as usize).sum::<usize>();
            i = j;
        }
        self.append(&vec![0x5Au8; commit_bytes(taking.len() as u64) as usize])?;
        Ok((taking.len(), bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// queue-file

/// queue-file 2.x with `sync_writes` on: every add and remove `fsync`s. It is not thread-safe,
/// so threads share it behind a lock.
pub struct QueueFilePeer {
    q: Mutex<queue_file::QueueFile>,
}

impl QueueFilePeer {
    fn open(dir: &Path) -> Result<Self> {
        let mut q = queue_file::QueueFile::open(dir.join("queue.qf"))?;
        q.set_sync_writes(true);
        Ok(QueueFilePeer { q: Mutex::new(q) })
    }
}

impl System for QueueFilePeer {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let mut q = self.q.lock().unwrap();
        q.add_n(events.iter().copied())?;
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let mut q = self.q.lock().unwrap();
        let (mut count, mut bytes) = (0, 0);
        for e in q.iter().take(n) {
            count += 1;
            bytes += e.len();
        }
        q.remove_n(count)?;
        Ok((count, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// redb

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("queue");

/// redb 4.x as a queue: a table from a sequence number to the event; every transaction commits
/// with `Durability::Immediate`. redb has one writer at a time; the lock also guards the next
/// sequence number.
pub struct RedbPeer {
    db: redb::Database,
    next: Mutex<u64>,
}

impl RedbPeer {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(dir.join("queue.redb"))?;
        Ok(RedbPeer {
            db,
            next: Mutex::new(0),
        })
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        Ok(tx)
    }
}

impl System for RedbPeer {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let mut next = self.next.lock().unwrap();
        let tx = self.write_txn()?;
        {
            let mut t = tx.open_table(REDB_TABLE)?;
            for (i, e) in events.iter().enumerate() {
                t.insert(*next + i as u64, *e)?;
            }
        }
        tx.commit()?;
        *next += events.len() as u64;
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let _next = self.next.lock().unwrap();
        let tx = self.write_txn()?;
        let (mut count, mut bytes) = (0, 0);
        {
            let mut t = tx.open_table(REDB_TABLE)?;
            while count < n {
                match t.pop_first()? {
                    Some((_, v)) => {
                        count += 1;
                        bytes += v.value().len();
                    }
                    None => break,
                }
            }
        }
        tx.commit()?;
        Ok((count, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

/// SQLite (bundled, through rusqlite) as a queue: `journal_mode=WAL`, `synchronous=FULL` (the
/// WAL is synced at every commit), one transaction per batch. One connection behind a lock:
/// SQLite has one writer at a time.
pub struct SqlitePeer {
    db: Mutex<rusqlite::Connection>,
}

impl SqlitePeer {
    fn open(dir: &Path) -> Result<Self> {
        let db = rusqlite::Connection::open(dir.join("queue.sqlite"))?;
        let mode: String = db.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" {
            return Err(format!("sqlite refused WAL mode: {mode}").into());
        }
        db.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE queue (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )?;
        let sync: i64 = db.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        if sync != 2 {
            return Err(format!("sqlite synchronous is {sync}, not FULL (2)").into());
        }
        Ok(SqlitePeer { db: Mutex::new(db) })
    }
}

impl System for SqlitePeer {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO queue (body) VALUES (?1)")?;
            for e in events {
                ins.execute([e])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        let (mut count, mut bytes) = (0, 0);
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT ?1)
                 RETURNING body",
            )?;
            let mut rows = del.query([n as i64])?;
            while let Some(r) = rows.next()? {
                count += 1;
                bytes += r.get_ref(0)?.as_blob()?.len();
            }
        }
        tx.commit()?;
        Ok((count, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// fjall

/// fjall 3.x as a queue: a keyspace from a big-endian sequence number to the event; a put is
/// one write batch, a take reads the oldest `n` and removes them in one batch; every batch
/// commits with `PersistMode::SyncData` (its journal `fdatasync`ed). Puts share a lock (it
/// hands out the sequence numbers in commit order, so a take never passes over a put that
/// commits late), and so do takes (two takes must not read the same events); a put and a take
/// run at once. A take reads from just past the last key it removed, so it never walks the
/// tombstones of earlier takes.
pub struct FjallPeer {
    db: fjall::Database,
    queue: fjall::Keyspace,
    next: Mutex<u64>,
    first: Mutex<u64>,
}

impl FjallPeer {
    fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir.join("queue.fjall")).open()?;
        let queue = db.keyspace("queue", fjall::KeyspaceCreateOptions::default)?;
        Ok(FjallPeer {
            db,
            queue,
            next: Mutex::new(0),
            first: Mutex::new(0),
        })
    }
}

// Big-endian keys: fjall orders keys bytewise, so the queue's order is the numbers' order.
#[allow(clippy::big_endian_bytes)]
impl System for FjallPeer {
    fn put(&self, events: &[&[u8]]) -> Result<()> {
        let mut next = self.next.lock().unwrap();
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (i, e) in events.iter().enumerate() {
            batch.insert(&self.queue, (*next + i as u64).to_be_bytes(), *e);
        }
        batch.commit()?;
        *next += events.len() as u64;
        Ok(())
    }

    fn take(&self, n: usize) -> Result<(usize, usize)> {
        let mut first = self.first.lock().unwrap();
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        let (mut count, mut bytes, mut last) = (0, 0, None);
        for kv in self.queue.range(first.to_be_bytes()..).take(n) {
            let (k, v) = kv.into_inner()?;
            bytes += v.len();
            count += 1;
            last = Some(k.clone());
            batch.remove(&self.queue, k);
        }
        let Some(last) = last else {
            return Ok((0, 0));
        };
        batch.commit()?;
        let key: [u8; 8] = last.as_ref().try_into()?;
        *first = u64::from_be_bytes(key) + 1;
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ceiling appends exactly what Sluicegate's log grows by for the same commits.
    #[test]
    fn the_ceiling_appends_what_sluicegate_appends() {
        use sluicegate_core::record::SEGMENT_HEADER_BYTES;
        let dir = std::env::temp_dir().join(format!("sg-bench-ceiling-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = sluicegate_config(&dir, 1);
        c.max_file_bytes = 1 << 20;
        c.checkpoint_interval_ms = 0;
        let ch = FileChannel::open(c.clone()).unwrap();
        let events: Vec<Vec<u8>> = (1..=5).map(|n| vec![7u8; n * 100 + n]).collect();
        let mut tx = ch.begin().unwrap();
        for e in &events {
            tx.put(e).unwrap();
        }
        tx.commit().unwrap();
        let mut tx = ch.begin().unwrap();
        while tx.take_vec().unwrap().is_some() {}
        tx.commit().unwrap();
        drop(ch);
        let expected = put_commit_bytes(events.iter().map(|e| e.len())) + commit_bytes(5);
        // The log's records end where the first all-zero header would start.
        let seg = std::fs::read(c.data_dirs[0].join(sluicegate_file::segment_name(0))).unwrap();
        let first = sluicegate_core::record::align_up(SEGMENT_HEADER_BYTES as u64, 8) as usize;
        let mut at = first;
        while seg[at..at + 16].iter().any(|&b| b != 0) {
            let len = u32::from_le_bytes([seg[at + 5], seg[at + 6], seg[at + 7], 0]) as u64;
            at += record_bytes(len) as usize;
        }
        assert_eq!((at - first) as u64, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
