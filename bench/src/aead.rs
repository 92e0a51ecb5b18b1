//! The AEAD comparison on the server: XChaCha20-Poly1305 (what Sluicegate seals with),
//! ChaCha20-Poly1305 and AES-256-GCM from RustCrypto, sealing messages in place, one nonce per
//! message as Sluicegate's records have. AES-GCM uses the CPU's AES and carry-less multiply
//! instructions where it has them (detected at run time). The Cortex-M4 side of the comparison
//! is `firmware-example/src/bin/aead_speed.rs`, run by `cargo xtask firmware`.

use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};

use crate::systems::Result;

/// The algorithms, in the table's order.
pub const ALGORITHMS: [&str; 3] = ["XChaCha20-Poly1305", "ChaCha20-Poly1305", "AES-256-GCM"];
/// Message sizes: a flash reading, a small event, the benchmark's event, a large one.
pub const SIZES: [usize; 4] = [32, 256, 1024, 16384];

/// One algorithm at one message size.
#[derive(Debug, Clone)]
pub struct AeadResult {
    pub algorithm: &'static str,
    pub size: usize,
    pub messages_per_sec: f64,
}

impl AeadResult {
    pub fn bytes_per_sec(&self) -> f64 {
        self.messages_per_sec * self.size as f64
    }
}

/// Seals messages of each size with each algorithm for `each` (per pair).
pub fn run(each: Duration) -> Result<Vec<AeadResult>> {
    let key = [7u8; 32];
    let ad = [1u8; 12];
    let x = XChaCha20Poly1305::new(&key.into());
    let c = ChaCha20Poly1305::new(&key.into());
    let g = Aes256Gcm::new(&key.into());
    let mut out = Vec::new();
    let mut buf = vec![0x5Au8; *SIZES.iter().max().unwrap_or(&0)];
    for size in SIZES {
        for (i, algorithm) in ALGORITHMS.into_iter().enumerate() {
            let started = Instant::now();
            let mut n = 0u64;
            let mut counter = 0u64;
            // Bounded by `each`.
            while started.elapsed() < each {
                for _ in 0..16 {
                    counter += 1;
                    let m = &mut buf[..size];
                    let sealed = match i {
                        0 => {
                            let mut nonce = [0u8; 24];
                            nonce[..8].copy_from_slice(&counter.to_le_bytes());
                            x.encrypt_inout_detached(&nonce.into(), &ad, m.into())
                        }
                        1 => {
                            let mut nonce = [0u8; 12];
                            nonce[..8].copy_from_slice(&counter.to_le_bytes());
                            c.encrypt_inout_detached(&nonce.into(), &ad, m.into())
                        }
                        _ => {
                            let mut nonce = [0u8; 12];
                            nonce[..8].copy_from_slice(&counter.to_le_bytes());
                            g.encrypt_inout_detached(&nonce.into(), &ad, m.into())
                        }
                    };
                    let tag = sealed.map_err(|_| format!("{algorithm} failed to seal"))?;
                    std::hint::black_box(&tag);
                    n += 1;
                }
            }
            out.push(AeadResult {
                algorithm,
                size,
                messages_per_sec: n as f64 / started.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(out)
}
