//! # sluicegate-sim
//!
//! Test media and checkers for Sluicegate, usable under your own host tests:
//!
//! - [`sim::SimStorage`]: a simulated NOR medium with live and durable images, power cuts that
//!   keep an arbitrary subset of unsynced writes and tear the interrupted one, interrupted
//!   erases, NOR-rule enforcement, injected I/O errors and operation counters;
//! - [`model`]: a model-based checker that runs random transactions against a `VecDeque` and
//!   checks every recovery, at random cut points or at every cut point of a workload.
//!
//! Firmware teams can run their application logic on the host against [`sim::SimStorage`] and
//! cut its power wherever they like; see the example on [`sim`].

pub mod model;
pub mod sim;

pub use model::{Outcome, Scenario};
pub use sim::{Counters, CrashPolicy, OpKind, SimError, SimStorage};
