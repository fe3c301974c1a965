//! Progress display for long commands: an indicatif bar on a terminal, or a log line every
//! 10% with `--quiet` (and when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A progress display over `total` units.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    label: &'static str,
    next_log: u64,
}

/// Starts a progress display.
pub(crate) fn bar(total: u64, label: &'static str, quiet: bool) -> Progress {
    let bar = (!quiet && console_is_terminal()).then(|| {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label);
        bar
    });
    Progress {
        bar,
        total,
        label,
        next_log: 0,
    }
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

impl Progress {
    /// Reports `done` units finished, with a short message (e.g. the current loss).
    pub(crate) fn step(&mut self, done: u64, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(message.to_string());
            }
            None => {
                if done >= self.next_log || done == self.total {
                    eprintln!("{} {done}/{}: {message}", self.label, self.total);
                    self.next_log = done + (self.total / 10).max(1);
                }
            }
        }
    }

    /// Ends the display.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
