//! Progress of long commands (a backup, a learner catching up) on a terminal: one line on
//! stderr, redrawn at most ten times a second, and nothing at all when stderr is not a
//! terminal, so that logs, pipes and CI output stay clean.

use std::io::Write;
use std::time::{Duration, Instant};

/// What the counted things are.
#[derive(Clone, Copy)]
pub enum Unit {
    Bytes,
    /// Raft log entries.
    Entries,
    /// Things looked at (blobs, manifests).
    Items,
}

/// One progress line.
pub struct Progress {
    label: String,
    unit: Unit,
    total: Option<u64>,
    tty: bool,
    drawn: Option<Instant>,
}

/// `n` things of `unit`, for people (bytes in KiB, MiB, GiB).
pub fn human(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Entries => format!("{n} entries"),
        Unit::Items => format!("{n} items"),
        Unit::Bytes if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        Unit::Bytes if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        Unit::Bytes if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        Unit::Bytes => format!("{n} B"),
    }
}

/// The line for `done` of `total`: a bar when the total is known.
pub fn line(label: &str, done: u64, total: Option<u64>, unit: Unit) -> String {
    match total.filter(|t| *t > 0) {
        Some(t) => {
            let done = done.min(t);
            let filled = (done as u128 * 30 / t as u128) as usize;
            format!(
                "{label} [{}{}] {:>3}% {} / {}",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                done as u128 * 100 / t as u128,
                human(done, unit),
                human(t, unit)
            )
        }
        None => format!("{label} {}", human(done, unit)),
    }
}

impl Progress {
    /// A progress line for `label`, shown only if stderr is a terminal.
    pub fn new(label: &str, unit: Unit) -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress { label: label.to_string(), unit, total: None, tty, drawn: None }
    }

    /// The total, once known.
    pub fn total(&mut self, total: u64) {
        self.total = Some(total);
    }

    /// Shows `done` (throttled).
    pub fn set(&mut self, done: u64) {
        if !self.tty || self.drawn.is_some_and(|d| d.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", line(&self.label, done, self.total, self.unit));
        let _ = err.flush();
    }

    /// Shows the final figure and ends the line.
    pub fn finish(&mut self, done: u64) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "\r\x1b[2K{}", line(&self.label, done, self.total, self.unit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_the_fraction_and_the_amounts() {
        assert_eq!(line("backup", 0, Some(4 << 20), Unit::Bytes), format!("backup [{}]   0% 0 B / 4.0 MiB", "-".repeat(30)));
        assert_eq!(line("backup", 2 << 20, Some(4 << 20), Unit::Bytes), format!("backup [{}{}]  50% 2.0 MiB / 4.0 MiB", "#".repeat(15), "-".repeat(15)));
        assert_eq!(line("x", 9, Some(3), Unit::Entries), format!("x [{}] 100% 3 entries / 3 entries", "#".repeat(30)));
        assert_eq!(line("x", 1536, None, Unit::Bytes), "x 1.5 KiB");
    }
}
