//! A progress bar on stderr while a phase runs: the bar, answers so far,
//! the current rate. On a terminal it redraws in place; in a log (CI, a
//! pipe) it prints a plain line every few seconds instead.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// A running progress display.
pub struct Progress {
    done: Arc<AtomicU64>,
    ticker: Option<JoinHandle<()>>,
}

const WIDTH: usize = 30;

impl Progress {
    /// Shows `label` and a bar towards `total` answers.
    pub fn start(label: &str, total: u64, visible: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        if !visible {
            return Progress { done, ticker: None };
        }
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        let label = label.to_owned();
        let counter = Arc::clone(&done);
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                let now = Instant::now();
                let n = counter.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
                last = (now, n);
                let line = line(&label, n, total, rate, started.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Progress {
            done,
            ticker: Some(ticker),
        }
    }

    /// The counter the load driver adds each answer to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }

    /// Stops the display and clears its line.
    pub fn finish(mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            if std::io::stderr().is_terminal() {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

fn line(label: &str, done: u64, total: u64, rate: f64, elapsed: Duration) -> String {
    if total == 0 {
        // A timed phase: no end to fill towards.
        return format!(
            "{label:<14} {done} answers, {rate:.0}/s, {:.1}s",
            elapsed.as_secs_f64()
        );
    }
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    format!(
        "{label:<14} [{}{}] {:>3.0}% {done}/{total} answers, {rate:.0}/s, {:.1}s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0,
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_with_the_answers() {
        let l = super::line(
            "seckill",
            50,
            100,
            1234.4,
            std::time::Duration::from_secs(2),
        );
        assert!(l.contains("[###############---------------]"), "{l}");
        assert!(l.contains(" 50% 50/100 answers, 1234/s"), "{l}");
        let full = super::line("x", 7, 5, 0.0, std::time::Duration::ZERO);
        assert!(full.contains("100%"), "{full}");
        let timed = super::line("x", 7, 0, 3.0, std::time::Duration::ZERO);
        assert!(
            timed.contains("7 answers, 3/s") && !timed.contains('%'),
            "{timed}"
        );
    }
}
