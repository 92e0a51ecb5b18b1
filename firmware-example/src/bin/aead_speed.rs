//! The AEAD comparison on the Cortex-M4: XChaCha20-Poly1305 (what Sluicegate seals with),
//! ChaCha20-Poly1305 and AES-256-GCM from RustCrypto, all in software (the M4 has no AES
//! instructions), sealing messages of 32 bytes (a reading), 256 bytes and 1 KiB in place.
//!
//! Run by `cargo xtask firmware` in QEMU with `-icount shift=0`: one instruction advances the
//! virtual clock by 1 ns, and SysTick counts the 25 MHz core clock, so one tick is 40
//! instructions. The figures are instructions, not cycles: on silicon, loads, multiplies and
//! flash wait states weigh differently, so read them as ratios between the algorithms.

#![no_std]
#![no_main]

use aes_gcm::Aes256Gcm;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::entry;
use defmt_semihosting as _;
use semihost::exit;

#[path = "../semihost.rs"]
mod semihost;

/// Instructions per SysTick tick under `-icount shift=0` on mps2-an386 (25 MHz).
const INSTRUCTIONS_PER_TICK: u32 = 40;
/// Messages sealed per measurement.
const ROUNDS: u32 = 16;

fn ticks_of(f: &mut impl FnMut()) -> u32 {
    let start = SYST::get_current();
    for _ in 0..ROUNDS {
        f();
    }
    let end = SYST::get_current();
    // SysTick counts down from 0xFF_FFFF; one measurement is far shorter than a wrap.
    start.wrapping_sub(end) & 0x00FF_FFFF
}

/// Instructions per message for `seal`, and per byte.
fn measure(
    name: &str,
    len: usize,
    buf: &mut [u8; 1024],
    mut seal: impl FnMut(&mut [u8]) -> bool,
) -> bool {
    let mut ok = true;
    let ticks = ticks_of(&mut || ok &= seal(&mut buf[..len]));
    let per_message = ticks * INSTRUCTIONS_PER_TICK / ROUNDS;
    defmt::println!(
        "aead: {=str} {=usize} B: {=u32} instructions per message, {=u32}.{=u32} per byte",
        name,
        len,
        per_message,
        per_message / len as u32,
        (per_message * 10 / len as u32) % 10
    );
    ok
}

#[entry]
fn main() -> ! {
    let mut core = cortex_m::Peripherals::take().expect("taken once");
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(0x00FF_FFFF);
    core.SYST.clear_current();
    core.SYST.enable_counter();

    let key = [7u8; 32];
    let ad = [1u8; 12];
    let mut buf = [0x5Au8; 1024];
    let x = XChaCha20Poly1305::new(&key.into());
    let c = ChaCha20Poly1305::new(&key.into());
    let g = Aes256Gcm::new(&key.into());
    let mut ok = true;
    for len in [32usize, 256, 1024] {
        ok &= measure("XChaCha20-Poly1305", len, &mut buf, |m| {
            x.encrypt_inout_detached(&[3u8; 24].into(), &ad, m.into())
                .is_ok()
        });
        ok &= measure("ChaCha20-Poly1305 ", len, &mut buf, |m| {
            c.encrypt_inout_detached(&[3u8; 12].into(), &ad, m.into())
                .is_ok()
        });
        ok &= measure("AES-256-GCM       ", len, &mut buf, |m| {
            g.encrypt_inout_detached(&[3u8; 12].into(), &ad, m.into())
                .is_ok()
        });
    }
    // The measured code really seals: a round trip through each must give the text back.
    let mut text = [0x42u8; 64];
    for which in 0..3 {
        let tag = match which {
            0 => x.encrypt_inout_detached(&[9u8; 24].into(), &ad, (&mut text[..]).into()),
            1 => c.encrypt_inout_detached(&[9u8; 12].into(), &ad, (&mut text[..]).into()),
            _ => g.encrypt_inout_detached(&[9u8; 12].into(), &ad, (&mut text[..]).into()),
        };
        let opened = tag.and_then(|t| match which {
            0 => x.decrypt_inout_detached(&[9u8; 24].into(), &ad, (&mut text[..]).into(), &t),
            1 => c.decrypt_inout_detached(&[9u8; 12].into(), &ad, (&mut text[..]).into(), &t),
            _ => g.decrypt_inout_detached(&[9u8; 12].into(), &ad, (&mut text[..]).into(), &t),
        });
        ok &= opened.is_ok() && text == [0x42u8; 64];
    }
    defmt::println!("summary: violations={=u32}", u32::from(!ok));
    exit(ok)
}
