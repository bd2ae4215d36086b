//! Age gauges: the series is the largest value of the live handles sharing its name and
//! labels (two publishers named `default` on one connection, two relays on one connection
//! name), not their sum as for [`Gauge`](super::Gauge): two backlogs 30 s old are 30 s old.

use super::{FacadeGauge, Labels};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// One series: the facade's gauge and the value of each live handle.
#[derive(Debug)]
struct Series {
    gauge: FacadeGauge,
    /// (handle id, value) for each live handle; a few at most.
    parts: Mutex<Vec<(u64, f64)>>,
}

impl Series {
    /// Sets handle `id`'s value (`None`: removes it) and the series to the largest.
    fn put(&self, id: u64, v: Option<f64>) {
        let mut parts = self.parts.lock().expect("metrics lock");
        match (parts.iter().position(|(i, _)| *i == id), v) {
            (Some(p), Some(v)) => parts[p].1 = v,
            (Some(p), None) => {
                parts.swap_remove(p);
            }
            (None, Some(v)) => parts.push((id, v)),
            (None, None) => {}
        }
        let max = parts.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        self.gauge.set(max);
    }
}

/// The process's series by name and labels; an entry lives as long as one handle does.
type Registry = HashMap<(&'static str, Vec<(&'static str, String)>), Weak<Series>>;

/// An age gauge handle: its series is the largest value of the live handles with its name and
/// labels. Dropped, its value leaves the series. Set it from one place at a time (its updates
/// are a short lock on the series: once per batch, not per message).
#[derive(Debug)]
pub(crate) struct MaxGauge {
    series: Arc<Series>,
    id: u64,
    /// The value last set (f64 bits): an unchanged value takes no lock.
    last: std::sync::atomic::AtomicU64,
}

impl MaxGauge {
    /// Resolves (or joins) the series `name` with labels `l`.
    pub(crate) fn new(name: &'static str, l: Labels<'_>) -> MaxGauge {
        use std::sync::atomic::{AtomicU64, Ordering};
        static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
        static IDS: AtomicU64 = AtomicU64::new(0);
        let key = (name, l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect());
        let mut reg = REGISTRY.lock().expect("metrics lock");
        let reg = reg.get_or_insert_with(HashMap::new);
        reg.retain(|_, s| s.strong_count() > 0);
        let series = match reg.get(&key).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Arc::new(Series {
                    gauge: super::facade_gauge(name, l),
                    parts: Mutex::new(Vec::new()),
                });
                reg.insert(key, Arc::downgrade(&s));
                s
            }
        };
        MaxGauge {
            series,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            last: AtomicU64::new(f64::NAN.to_bits()),
        }
    }

    /// This handle's value is now `v`.
    #[inline]
    pub(crate) fn set(&self, v: f64) {
        use std::sync::atomic::Ordering;
        if self.last.swap(v.to_bits(), Ordering::Relaxed) != v.to_bits() {
            self.series.put(self.id, Some(v));
        }
    }
}

impl Drop for MaxGauge {
    fn drop(&mut self) {
        self.series.put(self.id, None);
    }
}
