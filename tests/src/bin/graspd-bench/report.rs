//! Measurements and the printed table: percentiles, /proc readings, /metrics parsing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// One row of the result table: a measurement, its value per runtime (or one value), a note.
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub tokio: String,
    pub smol: String,
    pub note: String,
    /// The 1-minute load average when the row was recorded.
    pub load: String,
}

/// Collects rows and prints them as one Markdown table.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    /// A row with one value per runtime.
    pub fn both(
        &mut self,
        section: &'static str,
        measure: &str,
        tokio: String,
        smol: String,
        note: &str,
    ) {
        // Printed as recorded too, so a later failure loses nothing.
        eprintln!("[graspd-bench] {section} | {measure} | {tokio} | {smol}");
        self.rows.push(Row {
            section,
            measure: measure.to_owned(),
            tokio,
            smol,
            note: note.to_owned(),
            load: load_average(),
        });
    }

    /// A row measured once (not per runtime): the value goes in the tokio column's place.
    pub fn single(&mut self, section: &'static str, measure: &str, value: String, note: &str) {
        self.both(section, measure, value, "=".into(), note);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| section | measure | tokio | smol | load | note |");
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.section, r.measure, r.tokio, r.smol, r.load, r.note
            );
        }
        out
    }
}

/// (p50, p99) of durations, in milliseconds.
pub fn percentiles_ms(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: usize| v[((v.len() * p) / 100).min(v.len() - 1)];
    (at(50), at(99))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn fmt_p(p: (f64, f64)) -> String {
    format!("{:.1} / {:.1}", p.0, p.1)
}

/// A field of /proc/<pid>/status (VmRSS in kB, Threads).
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn rss_mib(pid: u32) -> f64 {
    proc_status(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

pub fn threads(pid: u32) -> u64 {
    proc_status(pid, "Threads").unwrap_or(0)
}

/// The 1-minute load average: the machine is shared, so every table says how busy it was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// One Prometheus sample: metric name, labels, value.
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// GET /metrics and parse the text exposition (enough for graspd's own metrics).
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let response = graspd_tests::http::request(addr, "GET", "/metrics", &[], b"");
    parse_metrics(&response.text())
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.trim_end_matches('}');
                let labels = body
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// Sum of a metric's samples per value of one label.
pub fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *out.entry(v.clone()).or_insert(0.0) += s.value;
        }
    }
    out
}
