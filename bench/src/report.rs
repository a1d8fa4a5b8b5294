//! Turning samples into figures: HDR-histogram percentiles, counts by
//! outcome, a throughput-and-latency timeline, and the files a run leaves
//! (JSON for tools, Markdown for people, SVG for eyes).

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{Recording, Sample};

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Where a bench's results go and whether progress shows (the command
/// line's `--out` and `--quiet`).
#[derive(Debug, Clone, clap::Args)]
pub struct Output {
    /// Directory for NAME.json, NAME.md and NAME.svg.
    #[arg(long, default_value = "bench-out")]
    pub out: std::path::PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// A histogram of microseconds, 1 µs to an hour, `digits` significant digits.
#[allow(
    clippy::expect_used,
    reason = "the bounds are constants hdrhistogram accepts"
)]
fn histogram_of(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, digits).expect("static histogram bounds are valid")
}

/// A histogram of microseconds, 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    histogram_of(3)
}

/// The figures of one recording.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub seconds: f64,
    /// Answers per second over the whole run.
    pub throughput: f64,
    /// Corrected for coordinated omission in open loop (from the due instant).
    pub latency: Latency,
    /// Open loop only: from the instant each request was actually sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_time: Option<Latency>,
    pub outcomes: BTreeMap<String, u64>,
    /// Connections the server closed (or that broke) and were opened again.
    pub reconnects: u64,
}

impl Summary {
    pub fn of(recording: &Recording) -> Summary {
        let mut latency = histogram();
        let mut service = histogram();
        let mut outcomes = BTreeMap::new();
        for s in &recording.samples {
            latency.saturating_record(s.latency_us.max(1));
            service.saturating_record(s.service_us.max(1));
            *outcomes.entry(s.outcome.to_owned()).or_default() += 1;
        }
        let seconds = recording.elapsed.as_secs_f64();
        let open = matches!(recording.mode, crate::load::Mode::Open { .. });
        Summary {
            requests: recording.samples.len() as u64,
            seconds,
            throughput: recording.samples.len() as f64 / seconds.max(1e-9),
            latency: Latency::of(&latency),
            service_time: open.then(|| Latency::of(&service)),
            outcomes,
            reconnects: recording.reconnects,
        }
    }
}

/// A storm split at its last reservation: the answers while units remained
/// (up to and including the last 201) and those after it, when every
/// answer is a refusal. The two phases run at very different rates (the
/// first waits on the stock's owner, the second on a snapshot), so one
/// figure for the whole storm says little of either.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct PhaseRates {
    /// From the start until the last reservation; `None`: nothing reserved.
    pub selling_seconds: Option<f64>,
    pub selling_answers: u64,
    pub selling_per_second: Option<f64>,
    pub sold_out_answers: u64,
    /// `None` when nothing was answered after the last reservation.
    pub sold_out_per_second: Option<f64>,
}

impl PhaseRates {
    /// The phases of `recording`, split at its last `reserved` answer.
    pub fn of(recording: &Recording) -> PhaseRates {
        let Some(split_us) = recording
            .samples
            .iter()
            .filter(|s| s.outcome == "reserved")
            .map(|s| s.done_us)
            .max()
        else {
            return PhaseRates {
                sold_out_answers: recording.samples.len() as u64,
                ..PhaseRates::default()
            };
        };
        let selling_answers = recording
            .samples
            .iter()
            .filter(|s| s.done_us <= split_us)
            .count() as u64;
        let sold_out_answers = recording.samples.len() as u64 - selling_answers;
        let selling_seconds = split_us.max(1) as f64 / 1e6;
        let rest = recording.elapsed.as_secs_f64() - split_us as f64 / 1e6;
        PhaseRates {
            selling_seconds: Some(selling_seconds),
            selling_answers,
            selling_per_second: Some(selling_answers as f64 / selling_seconds),
            sold_out_answers,
            sold_out_per_second: (sold_out_answers > 0 && rest > 0.0)
                .then(|| sold_out_answers as f64 / rest),
        }
    }

    /// `12,345 (1,000 in 0.081 s)`-style cells: the selling phase, then the
    /// sold-out phase.
    pub fn cells(&self) -> (String, String) {
        let rate = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.0}"));
        (
            format!(
                "{} ({} answers in {})",
                rate(self.selling_per_second),
                self.selling_answers,
                self.selling_seconds
                    .map_or("-".to_owned(), |s| format!("{s:.3} s"))
            ),
            format!(
                "{} ({} answers)",
                rate(self.sold_out_per_second),
                self.sold_out_answers
            ),
        )
    }
}

/// One slice of the run's time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// The slice's start, seconds since the start.
    pub t_s: f64,
    /// Answers per second in the slice.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A slice width giving about a hundred slices: 10 ms to 1 s.
pub fn bucket_width_us(elapsed_us: u64) -> u64 {
    const STEPS: [u64; 7] = [10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000];
    STEPS
        .into_iter()
        .find(|w| elapsed_us / w <= 120)
        .unwrap_or(1_000_000)
}

/// Throughput and latency over time, by the instant answers arrived.
pub fn timeline(samples: &[Sample], elapsed_us: u64) -> Vec<Bucket> {
    let width = bucket_width_us(elapsed_us);
    let slices = (elapsed_us / width + 1) as usize;
    let mut histograms: Vec<Histogram<u64>> = (0..slices).map(|_| histogram_of(2)).collect();
    for s in samples {
        let slice = ((s.done_us / width) as usize).min(slices - 1);
        histograms[slice].saturating_record(s.latency_us.max(1));
    }
    histograms
        .iter()
        .enumerate()
        .map(|(i, h)| Bucket {
            t_s: (i as u64 * width) as f64 / 1e6,
            per_second: h.len() as f64 * 1e6 / width as f64,
            p50_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            },
        })
        .collect()
}

/// Writes `name.json`, `name.md` and `name.svg` into `dir`; the paths.
pub fn write_files(
    dir: &Path,
    name: &str,
    json: &impl Serialize,
    markdown: &str,
    svg: &str,
) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(json).map_err(|e| e.to_string())?;
    let mut written = Vec::new();
    for (ext, body) in [("json", json.as_str()), ("md", markdown), ("svg", svg)] {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::write(&path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// A Markdown row of a latency summary.
pub fn latency_cells(l: &Latency) -> String {
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

/// What the machine is, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: &'static str,
    pub arch: &'static str,
    pub build: &'static str,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Mode;
    use std::time::Duration;

    fn sample(done_us: u64, latency_us: u64, outcome: &'static str) -> Sample {
        Sample {
            index: 0,
            done_us,
            latency_us,
            service_us: latency_us / 2,
            outcome,
        }
    }

    #[test]
    fn a_summary_counts_outcomes_and_reads_percentiles() {
        let mut samples: Vec<Sample> = (1..=1000).map(|i| sample(i * 1000, i * 10, "ok")).collect();
        samples.push(sample(1_000_000, 50_000, "sold_out"));
        let recording = Recording {
            mode: Mode::Open {
                rate: 1000.0,
                burst: 0,
                connections: 8,
            },
            samples,
            elapsed: Duration::from_secs(1),
            reconnects: 0,
        };
        let s = Summary::of(&recording);
        assert_eq!(s.requests, 1001);
        assert_eq!(s.outcomes["ok"], 1000);
        assert_eq!(s.outcomes["sold_out"], 1);
        assert!((s.throughput - 1001.0).abs() < 1e-6);
        // The 501st of 1001 samples is 5010 µs; HDR keeps 3 digits.
        assert!((s.latency.p50_ms - 5.01).abs() < 0.01, "{:?}", s.latency);
        assert!((s.latency.max_ms - 50.0).abs() < 0.05, "{:?}", s.latency);
        // Open loop keeps the uncorrected service time beside the latency.
        let service = s.service_time.expect("open loop has a service time");
        assert!(service.p50_ms < s.latency.p50_ms);
    }

    #[test]
    fn the_timeline_slices_the_run() {
        assert_eq!(bucket_width_us(1_000_000), 10_000);
        assert_eq!(bucket_width_us(10_000_000), 100_000);
        assert_eq!(bucket_width_us(1_000_000_000), 1_000_000);
        let samples: Vec<Sample> = (0..100).map(|i| sample(i * 10_000, 100, "ok")).collect();
        let t = timeline(&samples, 1_000_000);
        assert_eq!(t.len(), 101);
        assert_eq!(
            t.iter().map(|b| b.per_second).sum::<f64>() as u64,
            100 * 100
        );
        assert!((t[3].t_s - 0.03).abs() < 1e-9);
    }

    #[test]
    fn a_storm_splits_at_its_last_reservation() {
        // 100 answers in the first 0.1 s (the last reservation at 0.1 s),
        // then 900 refusals over the next 0.9 s.
        let mut samples: Vec<Sample> = (1..=99).map(|i| sample(i * 1000, 10, "sold_out")).collect();
        samples.push(sample(100_000, 10, "reserved"));
        samples.extend((1..=900).map(|i| sample(100_000 + i * 1000, 10, "sold_out")));
        let recording = Recording {
            mode: Mode::Closed { connections: 4 },
            samples,
            elapsed: Duration::from_secs(1),
            reconnects: 0,
        };
        let p = PhaseRates::of(&recording);
        assert_eq!((p.selling_answers, p.sold_out_answers), (100, 900));
        assert!(
            (p.selling_per_second.unwrap() - 1000.0).abs() < 1e-6,
            "{p:?}"
        );
        assert!(
            (p.sold_out_per_second.unwrap() - 1000.0).abs() < 1e-6,
            "{p:?}"
        );
        // Nothing reserved: no selling phase.
        let none = Recording {
            samples: vec![sample(5, 1, "sold_out")],
            ..recording
        };
        let p = PhaseRates::of(&none);
        assert_eq!((p.selling_per_second, p.sold_out_answers), (None, 1));
    }
}
