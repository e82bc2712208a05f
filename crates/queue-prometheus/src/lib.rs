//! A Prometheus exporter for the `metrics` facade (umbrella feature
//! `prometheus`, re-exported as `queue::prometheus`).
//!
//! The worker reports through the [`metrics`] facade, so any recorder
//! works; this one is built in, small, and needs no extra dependencies:
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> queue_core::Result<()> {
//! let exporter = queue_prometheus::PrometheusExporter::install()?;
//! exporter.serve("127.0.0.1:9464".parse().unwrap()).await?; // GET /metrics
//! // ... start workers after installing, so they register with it.
//! # Ok(()) }
//! ```
//!
//! Metrics written by the worker: `queue_jobs_total{queue, outcome}`
//! (completed, failed, retried, dead_lettered, cancelled),
//! `queue_job_pickup_seconds{queue}` and `queue_job_run_seconds{queue}`
//! (histograms), `queue_jobs_in_flight{queue}` (gauge).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use queue_core::error::{Error, ErrorKind, Result};

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut current = self.0.load(AtomicOrdering::Relaxed);
        loop {
            let next = f(f64::from_bits(current)).to_bits();
            match self.0.compare_exchange_weak(
                current,
                next,
                AtomicOrdering::Relaxed,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(AtomicOrdering::Relaxed))
    }
}

#[derive(Debug, Default)]
struct CounterCell(AtomicU64);

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, AtomicOrdering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, AtomicOrdering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct GaugeCell(AtomicF64);

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.0.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.0.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.0.update(|_| value);
    }
}

#[derive(Debug, Default)]
struct HistogramCell {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicF64,
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        if let Some(index) = BUCKETS.iter().position(|&bound| value <= bound) {
            self.buckets[index].fetch_add(1, AtomicOrdering::Relaxed);
        }
        self.count.fetch_add(1, AtomicOrdering::Relaxed);
        self.sum.update(|s| s + value);
    }
}

#[derive(Debug, Clone)]
enum Cell {
    Counter(Arc<CounterCell>),
    Gauge(Arc<GaugeCell>),
    Histogram(Arc<HistogramCell>),
}

/// (metric name, sorted labels)
type SeriesKey = (String, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Registry {
    series: Mutex<BTreeMap<SeriesKey, Cell>>,
    help: Mutex<BTreeMap<String, String>>,
}

impl Registry {
    fn cell(&self, key: &Key, make: impl FnOnce() -> Cell) -> Cell {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .entry((key.name().to_owned(), labels))
            .or_insert_with(make)
            .clone()
    }
}

#[derive(Debug, Clone)]
struct PrometheusRecorder(Arc<Registry>);

impl Recorder for PrometheusRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        match self.0.cell(key, || Cell::Counter(Arc::default())) {
            Cell::Counter(c) => Counter::from_arc(c),
            _ => Counter::noop(),
        }
    }
    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        match self.0.cell(key, || Cell::Gauge(Arc::default())) {
            Cell::Gauge(g) => Gauge::from_arc(g),
            _ => Gauge::noop(),
        }
    }
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        match self.0.cell(key, || Cell::Histogram(Arc::default())) {
            Cell::Histogram(h) => Histogram::from_arc(h),
            _ => Histogram::noop(),
        }
    }
}

impl PrometheusRecorder {
    fn describe(&self, key: KeyName, description: SharedString) {
        self.0
            .help
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.as_str().to_owned(), description.into_owned());
    }
}

/// The installed exporter: renders the text exposition format and can serve it.
#[derive(Debug, Clone)]
pub struct PrometheusExporter {
    registry: Arc<Registry>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &[(String, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl PrometheusExporter {
    /// Install as the global `metrics` recorder. Fails with a `Config`
    /// error if another recorder is already installed.
    pub fn install() -> Result<PrometheusExporter> {
        let registry = Arc::new(Registry::default());
        metrics::set_global_recorder(PrometheusRecorder(registry.clone())).map_err(|e| {
            Error::config(format!(
                "prometheus: a metrics recorder is already installed ({e})"
            ))
        })?;
        Ok(PrometheusExporter { registry })
    }

    /// Every series in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let series = self
            .registry
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let help = self.registry.help.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last_name = "";
        for ((name, labels), cell) in series.iter() {
            if name != last_name {
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {}", text.replace('\n', " "));
                }
                let kind = match cell {
                    Cell::Counter(_) => "counter",
                    Cell::Gauge(_) => "gauge",
                    Cell::Histogram(_) => "histogram",
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last_name = name;
            }
            match cell {
                Cell::Counter(c) => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        label_text(labels, None),
                        c.0.load(AtomicOrdering::Relaxed)
                    );
                }
                Cell::Gauge(g) => {
                    let _ = writeln!(out, "{name}{} {}", label_text(labels, None), g.0.get());
                }
                Cell::Histogram(h) => {
                    let mut cumulative = 0;
                    for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                        cumulative += bucket.load(AtomicOrdering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cumulative}",
                            label_text(labels, Some(("le", bound.to_string())))
                        );
                    }
                    let count = h.count.load(AtomicOrdering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        label_text(labels, Some(("le", "+Inf".into())))
                    );
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        label_text(labels, None),
                        h.sum.get()
                    );
                    let _ = writeln!(out, "{name}_count{} {count}", label_text(labels, None));
                }
            }
        }
        out
    }

    /// Serve `GET /metrics` on `addr` from a background task; returns the
    /// bound address (useful with port 0).
    pub async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("prometheus: cannot listen on {addr}"),
            )
            .with_source(e)
        })?;
        let bound = listener.local_addr().map_err(|e| {
            Error::new(ErrorKind::Connection, "prometheus: no local address").with_source(e)
        })?;
        let exporter = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: back off rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let exporter = exporter.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    // A client that sends nothing is dropped after 5 s.
                    let read = stream.read(&mut request);
                    let n =
                        match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
                            Ok(Ok(n)) => n,
                            _ => return,
                        };
                    let head = String::from_utf8_lossy(&request[..n]);
                    let (status, body) =
                        if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                            ("200 OK", exporter.render())
                        } else {
                            ("404 Not Found", "only GET /metrics is served\n".to_owned())
                        };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(bound)
    }
}
