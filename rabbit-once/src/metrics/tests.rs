//! The handles against a recorder of the test's own: gauges that sum, counters by reason,
//! descriptions for every name docs/metrics.md lists.

use super::describe::HELP;
use super::*;
use ::metrics::{
    Counter as C, Gauge as G, Histogram as H, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A recorder keeping every series (name and labels) as an atomic, and every description.
#[derive(Default)]
struct Recorded {
    series: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    described: Mutex<BTreeMap<String, (Option<Unit>, String)>>,
}

impl Recorded {
    fn series(&self, key: &Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        self.series.lock().unwrap().entry(id).or_default().clone()
    }

    /// A gauge's value (f64 bits in the atomic).
    fn gauge(&self, id: &str) -> f64 {
        let s = self.series.lock().unwrap();
        f64::from_bits(s.get(id).map_or(0, |a| a.load(Ordering::Relaxed)))
    }

    /// A counter's value.
    fn counter(&self, id: &str) -> u64 {
        let s = self.series.lock().unwrap();
        s.get(id).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    fn describe(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.described
            .lock()
            .unwrap()
            .insert(name.as_str().to_string(), (unit, help.to_string()));
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(name, unit, help);
    }
    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(name, unit, help);
    }
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(name, unit, help);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> C {
        C::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> G {
        G::from_arc(self.series(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> H {
        H::noop()
    }
}

#[test]
fn two_gauge_handles_with_the_same_labels_sum() {
    let rec = Recorded::default();
    let l: Labels<'_> = &[("connection", "c"), ("publisher", "copies")];
    let (a, b) = ::metrics::with_local_recorder(&rec, || {
        (gauge(PUBLISHER_BUFFERED, l), gauge(PUBLISHER_BUFFERED, l))
    });
    let id = "rabbit_once_publisher_buffered_messages{connection=c,publisher=copies}";
    a.set(3.0);
    b.set(4.0);
    assert_eq!(rec.gauge(id), 7.0, "each handle adds its part");
    a.set(1.0);
    assert_eq!(
        rec.gauge(id),
        5.0,
        "a handle's new value replaces only its part"
    );
    let c = b.clone();
    c.set(2.0);
    assert_eq!(rec.gauge(id), 7.0, "a clone is another part, from 0");
    drop(b);
    assert_eq!(rec.gauge(id), 3.0, "a dropped handle takes its part back");
    drop((a, c));
    assert_eq!(rec.gauge(id), 0.0);
}

#[test]
fn two_age_handles_with_the_same_labels_show_the_largest() {
    let rec = Recorded::default();
    // Labels of this test's own: the series registry is process-wide.
    let l: Labels<'_> = &[("connection", "max-test"), ("publisher", "default")];
    let (a, b) = ::metrics::with_local_recorder(&rec, || {
        (
            max_gauge(PUBLISHER_OLDEST_UNCONFIRMED_AGE, l),
            max_gauge(PUBLISHER_OLDEST_UNCONFIRMED_AGE, l),
        )
    });
    let id = "rabbit_once_publisher_oldest_unconfirmed_age_seconds{connection=max-test,publisher=default}";
    a.set(30.0);
    b.set(20.0);
    assert_eq!(rec.gauge(id), 30.0, "the largest, not the sum");
    a.set(10.0);
    assert_eq!(rec.gauge(id), 20.0, "the other handle's, now the largest");
    b.set(40.0);
    assert_eq!(rec.gauge(id), 40.0);
    drop(b);
    assert_eq!(
        rec.gauge(id),
        10.0,
        "a dropped handle's value leaves the series"
    );
    drop(a);
    assert_eq!(rec.gauge(id), 0.0);
}

#[test]
fn failures_by_reason_count_known_and_unknown_words_apart() {
    let rec = Recorded::default();
    let by = ::metrics::with_local_recorder(&rec, || {
        ByReason::new(PUBLISHER_FAILED, &[("connection", "c")])
    });
    // Resolved on first use, under whatever recorder registered it then.
    ::metrics::with_local_recorder(&rec, || {
        by.add("nacked", 2);
        by.add("nacked", 3);
        by.add("panic", 1);
        by.add("a_word_of_a_later_version", 4);
        by.add("a_word_of_a_later_version", 1);
        by.add("unroutable", 0);
    });
    let id = |r: &str| format!("rabbit_once_publisher_failed_total{{connection=c,reason={r}}}");
    assert_eq!(rec.counter(&id("nacked")), 5);
    assert_eq!(rec.counter(&id("panic")), 1);
    assert_eq!(rec.counter(&id("a_word_of_a_later_version")), 5);
    assert_eq!(rec.series.lock().unwrap().len(), 3, "no series for a 0");
}

/// The reason words in docs/metrics.md are [`REASONS`].
#[test]
fn the_reason_words_are_those_the_docs_list() {
    let docs = include_str!("../../../docs/metrics.md");
    let para: String = docs
        .split("`reason` words for errors:")
        .nth(1)
        .expect("the reason paragraph")
        .split("\n\n")
        .next()
        .unwrap()
        .to_string();
    let mut words: Vec<&str> = para.split('`').skip(1).step_by(2).collect();
    words.sort();
    words.dedup(); // `timeout` is in both lists
    let mut known = REASONS.to_vec();
    known.sort();
    assert_eq!(words, known);
}

/// Every metric of the library in docs/metrics.md's tables is described, with a unit from
/// its name, and nothing else is.
#[test]
fn every_documented_metric_is_described() {
    let rec = Recorded::default();
    ::metrics::with_local_recorder(&rec, describe);
    let described = rec.described.lock().unwrap().clone();
    let docs = include_str!("../../../docs/metrics.md");
    let mut documented: Vec<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `rabbit_once_"))
        .map(|rest| &rest[..rest.find('`').unwrap()])
        // The chaos run's own metrics are the CLI's, not the library's.
        .filter(|name| !name.starts_with("chaos_"))
        .collect();
    documented.sort();
    let mut names: Vec<&str> = described
        .keys()
        .map(|n| n.strip_prefix("rabbit_once_").unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names, documented,
        "HELP and docs/metrics.md list the same metrics"
    );
    assert_eq!(HELP.len(), described.len(), "no name twice");
    for (name, (unit, help)) in &described {
        assert!(!help.is_empty(), "{name}");
        let want = if name.ends_with("_seconds") {
            Unit::Seconds
        } else if name.ends_with("_bytes") {
            Unit::Bytes
        } else {
            Unit::Count
        };
        assert_eq!(unit.as_ref(), Some(&want), "{name}");
    }
}
