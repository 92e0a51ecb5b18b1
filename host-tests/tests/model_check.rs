//! The model checker under `cargo test`: a bounded set of exhaustive and random crash runs, so
//! that the test command alone catches a recovery bug. `cargo xtask sim` runs many more.

use sluicegate_sim::model::{exhaustive, run, Scenario};

/// A power cut at every mutation of a small workload, for several write sizes, never loses or
/// resurrects anything.
#[test]
fn every_cut_point_of_small_workloads() {
    let scenario = Scenario::small(40);
    let mut points = 0;
    for seed in 0..3 {
        points += exhaustive::<1, 256>(&scenario, seed).unwrap().0;
        points += exhaustive::<4, 256>(&scenario, seed).unwrap().0;
        points += exhaustive::<32, 256>(&scenario, seed).unwrap().0;
    }
    assert!(points > 200, "only {points} cut points");
}

/// Random multi-crash runs on a medium that erases to zero pass too.
#[test]
fn random_cuts_on_zero_erased_medium() {
    let mut scenario = Scenario::small(60);
    scenario.erased = 0x00;
    let mut crashes = 0;
    for seed in 0..40 {
        crashes += run::<8, 256>(&scenario, seed, None, 4).unwrap().crashes;
    }
    assert!(crashes > 20, "only {crashes} crashes");
}
