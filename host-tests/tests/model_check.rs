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

/// The same with the log and checkpoints sealed: every cut point, on write sizes that take the
/// one-pass (1, 4) and the two-pass (32) sealed write, with checkpoints, and no nonce is ever
/// found sealing two different texts on the medium.
#[test]
fn every_cut_point_of_small_sealed_workloads() {
    let plain = Scenario::small(40).sealed();
    let checkpointed = Scenario::small(40).with_checkpoints(2).sealed();
    let (mut points, mut nonces) = (0, 0);
    for seed in 0..2 {
        for scenario in [&plain, &checkpointed] {
            for (n, o) in [
                exhaustive::<1, 256>(scenario, seed).unwrap(),
                exhaustive::<4, 256>(scenario, seed).unwrap(),
                exhaustive::<32, 256>(scenario, seed).unwrap(),
            ] {
                points += n;
                nonces += o.nonces_checked;
            }
        }
    }
    assert!(points > 300, "only {points} cut points");
    assert!(nonces > 100, "only {nonces} nonces checked");
}

/// Random multi-crash sealed runs, with damaged checkpoints, pass too.
#[test]
fn random_cuts_sealed() {
    let scenario = Scenario::small(60).with_checkpoints(1).sealed();
    let (mut crashes, mut nonces) = (0, 0);
    for seed in 0..40 {
        let o = run::<8, 256>(&scenario, seed, None, 4).unwrap();
        crashes += o.crashes;
        nonces += o.nonces_checked;
    }
    assert!(crashes > 20, "only {crashes} crashes");
    assert!(nonces > 1000, "only {nonces} nonces checked");
}
