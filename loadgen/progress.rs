//! A live progress line on stderr, rewritten in place (`\r`) at most once a second, so that a
//! long run shows it is alive without flooding a log. Short phases finish before the first
//! line is due and print nothing. When stderr is not a terminal (a log file, a CI job), each
//! update is a line of its own: a `\r` there would pile every update onto one line.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    enabled: bool,
    next_at: Instant,
    /// Length of the line on screen, to blank out the rest when a shorter one replaces it.
    width: usize,
    /// Whether stderr is a terminal: the line is rewritten in place only there.
    terminal: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            next_at: Instant::now() + EVERY,
            width: 0,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// How long until the next line is due: an upper bound for the event loop's wait.
    pub fn wait(&self, now: Instant) -> Duration {
        if !self.enabled {
            // With no line to show there is nothing to wake up for: a zero wait here would turn
            // the event loop into a busy poll that steals the server's CPU.
            return Duration::MAX;
        }
        self.next_at.saturating_duration_since(now)
    }

    /// Shows the line `line()` builds, if one is due.
    pub fn tick(&mut self, now: Instant, line: impl FnOnce() -> String) {
        if !self.enabled || now < self.next_at {
            return;
        }
        self.next_at = now + EVERY;
        let line = line();
        let mut err = std::io::stderr().lock();
        if !self.terminal {
            let _ = writeln!(err, "{line}");
            return;
        }
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        // A progress line that cannot be written is no reason to stop.
        let _ = write!(err, "\r{line}{:pad$}", "");
        let _ = err.flush();
    }

    /// Ends the current line, if any, so the next output starts on a fresh one.
    pub fn finish(&mut self) {
        if self.width > 0 {
            eprintln!();
            self.width = 0;
        }
        self.next_at = Instant::now() + EVERY;
    }
}
