//! Measures the two ways the file adapter could write the log, with the same durability:
//! positioned writes (`pwrite`) then `fdatasync`, against copies into a writable memory map
//! then `msync` of the written range. Appends `RECORD` bytes at a time into a preallocated file
//! and syncs every `BATCH` records, as commits do. Prints both rates and their ratio.
//!
//! `cargo run --release -p sluicegate-file --example write_path [DIR]`

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const FILE_BYTES: u64 = 64 << 20;
const RECORD: usize = 272;
/// Bytes appended per run: less when every record is synced, so the run stays short.
fn total_bytes(batch: u64) -> u64 {
    (batch * (4 << 20)).min(48 << 20)
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let record = vec![0xA5u8; RECORD];
    println!(
        "{RECORD}-byte appends into a preallocated {} MiB file in {}",
        FILE_BYTES >> 20,
        dir.display()
    );
    for batch in [1u64, 8, 64] {
        let mut rates = Vec::new();
        for (name, use_map) in [("pwrite + fdatasync", false), ("mmap copy + msync", true)] {
            let path = dir.join(format!("sluicegate-write-path-{}.tmp", std::process::id()));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            file.write_all_at(&vec![0u8; FILE_BYTES as usize], 0)?;
            file.sync_all()?;
            // SAFETY: the file is private to this process, created above, and not resized while
            // mapped.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
            let records = total_bytes(batch) / RECORD as u64;
            let started = Instant::now();
            let mut at = 0usize;
            let mut synced_from = 0usize;
            for i in 0..records {
                if use_map {
                    map[at..at + RECORD].copy_from_slice(&record);
                } else {
                    file.write_all_at(&record, at as u64)?;
                }
                at += RECORD;
                if (i + 1) % batch == 0 {
                    if use_map {
                        map.flush_range(synced_from, at - synced_from)?;
                    } else {
                        file.sync_data()?;
                    }
                    synced_from = at;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let syncs = records / batch;
            let rate = total_bytes(batch) as f64 / secs / 1e6;
            println!("  sync every {batch:>2} records, {name:<20}: {rate:>7.1} MB/s ({syncs} syncs in {secs:.2} s)");
            rates.push(rate);
            drop(map);
            std::fs::remove_file(&path)?;
        }
        println!(
            "  sync every {batch:>2} records: mmap / pwrite = {:.2}",
            rates[1] / rates[0]
        );
    }
    Ok(())
}
