//! The random operation sequences, and the cases that run them against the model.

use super::reference::{GONE, IDS, Model, Op, Stats};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

fn op() -> impl Strategy<Value = Op> {
    let dest = prop_oneof![6 => 0..GONE, 1 => Just(GONE)];
    prop_oneof![
        4 => (0..IDS.len(), dest, prop::bool::weighted(0.85), 1..100usize).prop_map(
            |(id, dest, mandatory, size)| Op::Push { id, dest, mandatory, size }
        ),
        3 => (1..5usize).prop_map(Op::Send),
        4 => (1..5usize).prop_map(Op::Read),
        5 => (0..16usize, prop::bool::weighted(0.3), prop::bool::weighted(0.25))
            .prop_map(|(pick, multiple, nack)| Op::Confirm { pick, multiple, nack }),
        1 => Just(Op::ConnectionLost),
        1 => Just(Op::ChannelClosed),
        2 => (0..40u64).prop_map(Op::Advance),
        1 => (0..3u64).prop_map(Op::UnknownAck),
    ]
}

fn run(
    routable: [bool; 3],
    window: usize,
    max_nacks: u32,
    ops: &[Op],
) -> Result<Stats, TestCaseError> {
    let mut m = Model::new(routable, window, max_nacks);
    m.check()?;
    for op in ops {
        m.step(op)?;
    }
    m.finish()?;
    Ok(m.stats)
}

#[test]
fn buffer_agrees_with_the_model() {
    let config = Config {
        cases: 512,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 10_000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5e; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (
        prop::array::uniform3(prop::bool::weighted(0.6)),
        1..6usize,
        0..3u32,
        prop::collection::vec(op(), 1..100),
    );
    let total = std::cell::Cell::new(Stats::default());
    let result = runner.run(&strategy, |(routable, window, max_nacks, ops)| {
        let s = run(routable, window, max_nacks, &ops)?;
        let t = total.get();
        total.set(Stats {
            ok: t.ok + s.ok,
            unroutable: t.unroutable + s.unroutable,
            nacked: t.nacked + s.nacked,
            refused: t.refused + s.refused,
            not_found: t.not_found + s.not_found,
            retried: t.retried + s.retried,
            resent: t.resent + s.resent,
            ambiguous_returns: t.ambiguous_returns + s.ambiguous_returns,
            drained: t.drained + s.drained,
        });
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (routable, window, max_nacks, ops))) => panic!(
            "{why}\nroutable: {routable:?}, window: {window}, max_nacks: {max_nacks}\nops: {ops:#?}"
        ),
        Err(e) => panic!("{e}"),
    }
    let t = total.get();
    println!("{t:?}");
    let reached = [
        t.ok,
        t.unroutable,
        t.nacked,
        t.refused,
        t.not_found,
        t.retried,
        t.resent,
        t.ambiguous_returns,
        t.drained,
    ];
    assert!(
        reached.iter().all(|&n| n >= 20),
        "too few cases reach every outcome: {t:?}"
    );
}

/// One id sent to a routable and an unroutable destination: only the newer copy is returned, so
/// only it may fail. (Matching returns by id alone marked the older copy.)
#[test]
fn model_one_id_to_two_destinations() {
    let push = |dest| Op::Push {
        id: 0,
        dest,
        mandatory: true,
        size: 1,
    };
    let ops = [
        push(0),
        push(1),
        Op::Send(2),
        Op::Read(1),
        Op::Confirm {
            pick: 1,
            multiple: false,
            nack: false,
        },
        Op::Confirm {
            pick: 0,
            multiple: false,
            nack: false,
        },
        Op::Read(2),
    ];
    let stats = run([true, false, true], 4, 2, &ops).unwrap();
    assert_eq!(
        (stats.ok, stats.unroutable, stats.ambiguous_returns),
        (1, 1, 1)
    );
}
