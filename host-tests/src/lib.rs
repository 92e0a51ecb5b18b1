//! # sluicegate-sim
//!
//! Test media and checkers for Sluicegate, usable under your own host tests:
//!
//! - [`sim::SimStorage`]: a simulated NOR medium with live and durable images, power cuts that
//!   keep an arbitrary subset of unsynced writes and tear the interrupted one, interrupted
//!   erases, NOR-rule enforcement, injected I/O errors and operation counters;
//! - [`nor::SimNor`]: a simulated NOR flash part behind `embedded_storage`'s `NorFlash`
//!   (write-once words, AND/OR writes, torn programs, interrupted erases that leave garbage,
//!   unstable reads), on which the flash adapter runs as [`model::FlashSim`], and its async
//!   side, behind [`asynch::Yielding`], as [`model::AsyncFlashSim`];
//! - [`model`]: a model-based checker that runs random transactions against a `VecDeque` and
//!   checks every recovery, at random cut points or at every cut point of a workload;
//! - [`kill`]: the same verdict on the file channel, across real processes killed with SIGKILL;
//! - [`power`]: the same verdict again, with those processes' power cut under them by the
//!   power-cut filesystem (`sluicegate-powerfs`), which forgets what no sync covered.
//!
//! Firmware teams can run their application logic on the host against [`sim::SimStorage`] and
//! cut its power wherever they like; see the example on [`sim`].

//! A storage can carry only one channel at a time: a channel holds its storage (or a `&mut` to
//! it), so opening a second channel on the same storage while the first is alive does not
//! compile:
//!
//! ```compile_fail
//! use sluicegate_core::{Channel, Config};
//! use sluicegate_sim::SimStorage;
//! const CONFIG: Config = Config::new(8, 4, 2, 64, 512);
//! let mut sim: SimStorage<4, 256> = SimStorage::new(8 * 512, 0xFF);
//! let (mut m1, mut m2) = (vec![0u64; CONFIG.memory_words()], vec![0u64; CONFIG.memory_words()]);
//! let first = Channel::open(&mut sim, &mut m1[..], CONFIG).unwrap();
//! let second = Channel::open(&mut sim, &mut m2[..], CONFIG).unwrap(); // error: `sim` is borrowed
//! drop((first, second));
//! ```

pub mod asynch;
pub mod kill;
pub mod model;
pub mod nor;
pub mod power;
pub mod sim;

pub use asynch::Yielding;
pub use model::{AsyncFlashSim, FlashSim, Medium, Outcome, Scenario};
pub use nor::{NorCounters, NorError, SimNor};
pub use sim::{Counters, CrashPolicy, OpKind, SimError, SimStorage};
