//! The first thing to run: events through a channel on the simulated medium, a power cut in the
//! middle of a transaction, and what recovery made of it.
//!
//! `cargo run --release -p sluicegate-sim --example demo`

use sluicegate_core::{Channel, Config, Error};
use sluicegate_sim::{CrashPolicy, SimError, SimStorage};

/// 64 events of up to 100 bytes, transactions of up to 16, 4 at once, 1 KiB segments; a
/// checkpoint every 3 commits.
const CONFIG: Config = Config::new(64, 16, 4, 100, 1024).with_checkpoints(3, 0, 0);
/// 16 segments of 1 KiB on a medium with 4-byte words and 512-byte erase blocks.
type Medium = SimStorage<4, 512>;

fn main() -> Result<(), Error<SimError>> {
    // A 16 KiB log and two 1 KiB checkpoint slots.
    let mut flash: Medium = SimStorage::with_checkpoints(16 * 1024, 1024, 0xFF);
    let mut memory = vec![0u64; CONFIG.memory_words()];
    println!(
        "channel: capacity {} events, {} bytes of RAM for the queue and transactions",
        CONFIG.capacity(),
        CONFIG.memory_bytes()
    );

    let mut channel = Channel::open(&mut flash, &mut memory[..], CONFIG)?;
    println!("open #1: {:?}", channel.recovery().path);
    let mut acked = 0;
    for batch in 0..5 {
        let tx = channel.begin()?;
        for i in 0..8 {
            channel.put(tx, format!("reading {batch}.{i}").as_bytes())?;
        }
        channel.commit(tx)?;
        acked += 8;
    }
    println!("committed {acked} readings in 5 transactions");

    // A consumer takes 8 and commits; another takes 8 and has not committed yet.
    let mut buf = [0u8; 100];
    let tx = channel.begin()?;
    for _ in 0..8 {
        channel.take(tx, &mut buf)?;
    }
    channel.commit(tx)?;
    let open_take = channel.begin()?;
    for _ in 0..8 {
        channel.take(open_take, &mut buf)?;
    }
    // A producer is half way through a transaction.
    let open_put = channel.begin()?;
    channel.put(open_put, b"never committed")?;
    let stats = channel.stats();
    println!(
        "before the power cut: depth {}, {} taken but not committed, {} put but not committed",
        stats.depth, stats.in_flight_takes, stats.pending_puts
    );
    let ops = channel.storage().counters();
    println!(
        "medium so far: {} writes ({} bytes), {} erases, {} syncs; {} checkpoints",
        ops.writes, ops.bytes_written, ops.erases, ops.syncs, stats.checkpoints
    );

    // Power fails. Whatever was not synced may or may not have reached the medium.
    flash.reboot(2026, CrashPolicy::Random);
    let mut channel = Channel::open(&mut flash, &mut memory[..], CONFIG)?;
    let r = *channel.recovery();
    println!(
        "open #2 after the power cut: from {:?} #{} ({} events), then the log after it: {} records, {} puts, {} put commits, {} take commits, {} uncommitted puts ignored",
        r.path, r.checkpoint, r.checkpoint_events, r.records_read, r.puts, r.put_commits, r.take_commits, r.uncommitted_puts
    );
    let tx = channel.begin()?;
    let mut first = None;
    let mut delivered = 0;
    while let Some(n) = channel.take(tx, &mut buf)? {
        first.get_or_insert_with(|| String::from_utf8_lossy(&buf[..n]).into_owned());
        delivered += 1;
        if delivered == CONFIG.transaction_capacity() {
            break;
        }
    }
    channel.commit(tx)?;
    println!(
        "after recovery {} readings remain ({} committed - 8 taken for good); the uncommitted take comes back first: {:?}",
        r.events,
        acked,
        first.unwrap_or_default()
    );
    assert_eq!(
        r.events,
        acked - 8,
        "every acknowledged reading not taken for good is back"
    );
    Ok(())
}
