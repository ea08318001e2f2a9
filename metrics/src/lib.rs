//! The metrics of a strata process, served at `/metrics` in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! One registry per process ([`global`]): in `strata dev` every role adds
//! to it, the storage nodes' series told apart by their `node` label.
//! Counters, gauges and histograms are atomics updated where things
//! happen; a [`Registry::gauge_fn`] is computed when scraped (sizes of
//! queues, memtables, Raft state). The metric names are listed in
//! `docs/metrics.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

/// Buckets of latency histograms, in seconds: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The process's registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// A monotonically increasing count. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into buckets (cumulative when rendered), with
/// their sum and count. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, then the +Inf bucket; not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of observations in nanounits (nanoseconds for latencies).
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .0
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.0.bounds.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_nanos
            .fetch_add((v.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

type Labels = Vec<(String, String)>;

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    GaugeFn(Arc<dyn Fn() -> f64 + Send + Sync>),
    Histogram(Histogram),
}

struct Family {
    help: String,
    kind: &'static str,
    series: BTreeMap<Labels, Series>,
    /// Series computed at scrape time, label sets and all, by owner
    /// (a role may register once per instance).
    dynamic: BTreeMap<String, DynamicSeries>,
}

type DynamicSeries = Arc<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>;

/// Metric families by name.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    fn series<T>(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        pairs: &[(&str, &str)],
        make: impl FnOnce() -> Series,
        get: impl FnOnce(&Series) -> Option<T>,
    ) -> T {
        let mut families = self.families.lock();
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
            dynamic: BTreeMap::new(),
        });
        assert_eq!(family.kind, kind, "metric {name} registered as two kinds");
        let series = family.series.entry(labels(pairs)).or_insert_with(make);
        get(series).unwrap_or_else(|| panic!("metric {name} registered as two kinds"))
    }

    /// The counter `name` with these labels, made on first use.
    pub fn counter(&self, name: &str, help: &str, pairs: &[(&str, &str)]) -> Counter {
        self.series(
            name,
            help,
            "counter",
            pairs,
            || Series::Counter(Counter::default()),
            |s| match s {
                Series::Counter(c) => Some(c.clone()),
                _ => None,
            },
        )
    }

    /// The gauge `name` with these labels, made on first use.
    pub fn gauge(&self, name: &str, help: &str, pairs: &[(&str, &str)]) -> Gauge {
        self.series(
            name,
            help,
            "gauge",
            pairs,
            || Series::Gauge(Gauge::default()),
            |s| match s {
                Series::Gauge(g) => Some(g.clone()),
                _ => None,
            },
        )
    }

    /// A gauge computed by `f` at every scrape; a second registration
    /// with the same labels replaces the first (a role restarted in the
    /// same process).
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        pairs: &[(&str, &str)],
        f: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let mut families = self.families.lock();
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind: "gauge",
            series: BTreeMap::new(),
            dynamic: BTreeMap::new(),
        });
        family
            .series
            .insert(labels(pairs), Series::GaugeFn(Arc::new(f)));
    }

    /// Gauges whose label sets are only known at scrape time (one per
    /// queue, per target node): `f` returns each series' labels and value.
    /// `owner` names the registration, which a later one with the same
    /// owner replaces.
    pub fn gauge_family_fn(
        &self,
        name: &str,
        help: &str,
        owner: &str,
        f: impl Fn() -> Vec<(Vec<(String, String)>, f64)> + Send + Sync + 'static,
    ) {
        self.family_fn(name, help, "gauge", owner, f);
    }

    /// As [`Registry::gauge_family_fn`], for counts kept elsewhere that
    /// only grow.
    pub fn counter_family_fn(
        &self,
        name: &str,
        help: &str,
        owner: &str,
        f: impl Fn() -> Vec<(Vec<(String, String)>, f64)> + Send + Sync + 'static,
    ) {
        self.family_fn(name, help, "counter", owner, f);
    }

    fn family_fn(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        owner: &str,
        f: impl Fn() -> Vec<(Vec<(String, String)>, f64)> + Send + Sync + 'static,
    ) {
        let mut families = self.families.lock();
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
            dynamic: BTreeMap::new(),
        });
        family.dynamic.insert(owner.to_string(), Arc::new(f));
    }

    /// The histogram `name` with these labels and `bounds`, made on first
    /// use.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        pairs: &[(&str, &str)],
        bounds: &'static [f64],
    ) -> Histogram {
        self.series(
            name,
            help,
            "histogram",
            pairs,
            || Series::Histogram(Histogram::new(bounds)),
            |s| match s {
                Series::Histogram(h) => Some(h.clone()),
                _ => None,
            },
        )
    }

    /// Every metric in the Prometheus text format. The computed gauges
    /// run after the registry's lock is released: they take locks of
    /// their own, whose holders may be registering a metric.
    pub fn render(&self) -> String {
        #[allow(clippy::type_complexity)]
        let families: Vec<(
            String,
            String,
            &'static str,
            Vec<(Labels, Series)>,
            Vec<DynamicSeries>,
        )> = self
            .families
            .lock()
            .iter()
            .map(|(name, f)| {
                (
                    name.clone(),
                    f.help.clone(),
                    f.kind,
                    f.series
                        .iter()
                        .map(|(l, s)| (l.clone(), s.clone()))
                        .collect(),
                    f.dynamic.values().cloned().collect(),
                )
            })
            .collect();
        let mut out = String::new();
        for (name, help, kind, series, dynamic) in &families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, series) in series {
                match series {
                    Series::Counter(c) => sample(&mut out, name, labels, None, c.get() as f64),
                    Series::Gauge(g) => sample(&mut out, name, labels, None, g.get() as f64),
                    Series::GaugeFn(f) => sample(&mut out, name, labels, None, f()),
                    Series::Histogram(h) => {
                        let mut cumulative = 0u64;
                        let bucket = format!("{name}_bucket");
                        for (i, count) in h.0.counts.iter().enumerate() {
                            cumulative += count.load(Ordering::Relaxed);
                            let le = match h.0.bounds.get(i) {
                                Some(b) => format_value(*b),
                                None => "+Inf".to_string(),
                            };
                            sample(&mut out, &bucket, labels, Some(&le), cumulative as f64);
                        }
                        let sum = h.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                        sample(&mut out, &format!("{name}_sum"), labels, None, sum);
                        sample(
                            &mut out,
                            &format!("{name}_count"),
                            labels,
                            None,
                            cumulative as f64,
                        );
                    }
                }
            }
            for f in dynamic {
                for (labels, v) in f() {
                    sample(&mut out, name, &labels, None, v);
                }
            }
        }
        out
    }
}

fn sample(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, v: f64) {
    out.push_str(name);
    let mut pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(le) = le {
        pairs.push(("le", le));
    }
    if !pairs.is_empty() {
        out.push('{');
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(v));
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`, answering the process's registry; merged into each
/// role's HTTP server (on storage nodes and catalog members, their gRPC
/// port, which also speaks HTTP/1.1 for this).
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                global().render(),
            )
        }),
    )
}

/// [`router`] for a gRPC port: other paths are answered as gRPC answers
/// an unknown method (`grpc-status: 12`), not with a bare HTTP 404.
pub fn grpc_port_router() -> axum::Router {
    router().fallback(|| async {
        (
            [
                (axum::http::header::CONTENT_TYPE, "application/grpc"),
                (axum::http::HeaderName::from_static("grpc-status"), "12"),
                (
                    axum::http::HeaderName::from_static("grpc-message"),
                    "unknown service or method",
                ),
            ],
            "",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let r = Registry::default();
        let c = r.counter("strata_test_total", "Things done.", &[("node", "1")]);
        c.inc_by(3);
        r.counter("strata_test_total", "Things done.", &[("node", "1")])
            .inc();
        r.gauge("strata_level", "A \"level\".", &[]).set(-2);
        r.gauge_fn("strata_computed", "Computed.", &[("q", "a\"b")], || 1.5);
        r.gauge_family_fn("strata_queued", "Queued.", "x", || {
            vec![(vec![("node".into(), "2".into())], 7.0)]
        });
        let h = r.histogram("strata_latency_seconds", "Latency.", &[], &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE strata_test_total counter\n"),
            "{text}"
        );
        assert!(text.contains("strata_test_total{node=\"1\"} 4\n"), "{text}");
        assert!(text.contains("strata_level -2\n"), "{text}");
        assert!(text.contains("strata_queued{node=\"2\"} 7\n"), "{text}");
        assert!(
            text.contains("strata_computed{q=\"a\\\"b\"} 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_latency_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_latency_seconds_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("strata_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("strata_latency_seconds_sum 5.55\n"), "{text}");
        assert!(text.contains("strata_latency_seconds_count 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn a_computed_gauge_may_touch_the_registry() {
        // As a gauge reading a lock whose holder registers a counter: the
        // callbacks run outside the registry's lock.
        let r: &'static Registry = Box::leak(Box::default());
        r.gauge_fn("strata_reentrant", "Reentrant.", &[], move || {
            r.counter("strata_inner_total", "Inner.", &[]).inc();
            1.0
        });
        let text = r.render();
        assert!(text.contains("strata_reentrant 1\n"), "{text}");
        assert!(r.render().contains("strata_inner_total 1\n"));
    }
}
