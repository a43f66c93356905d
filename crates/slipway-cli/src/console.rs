//! What `slipway run` prints while a pipeline runs: every job line prefixed by the job's
//! name (aligned; coloured per job on a terminal unless `NO_COLOR` is set), a line when a
//! job ends, and on a terminal a live view of the running jobs and of how many have
//! finished (indicatif). Off a terminal the output is plain, block-buffered and flushed
//! after every chunk a job prints, so a job printing gigabytes costs few writes.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use slipway_core::schedule::{JobStatus, PipelineStatus};
use slipway_runner::pipeline::{Event, JobResult, RunResult};
use std::collections::HashMap;
use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::sync::Mutex;
use std::time::Duration;

/// Foreground colours given to jobs in turn.
const COLOURS: &[&str] = &[
    "36", "33", "35", "32", "34", "31", "96", "93", "95", "92", "94", "91",
];
/// Names longer than this are not padded to: they would push every line right.
const MAX_PAD: usize = 40;

pub struct Console {
    width: usize,
    colour: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    out: BufWriter<Stdout>,
    /// On a terminal: the live view, and lines waiting to be printed above it.
    live: Option<Live>,
    pending: String,
}

struct Live {
    multi: MultiProgress,
    overall: ProgressBar,
    running: HashMap<usize, ProgressBar>,
}

/// Whether to colour: a terminal, and `NO_COLOR` unset or empty (no-color.org).
fn colour_wanted(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Console {
    /// A console for a pipeline of `jobs` jobs whose names are `names`.
    pub fn new(names: &[&str]) -> Console {
        let tty = std::io::stdout().is_terminal();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(4)
            .min(MAX_PAD);
        let live = tty.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let overall = multi.add(ProgressBar::new(names.len() as u64));
            overall.set_style(
                ProgressStyle::with_template("{spinner} {pos}/{len} jobs finished  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            overall.enable_steady_tick(Duration::from_millis(120));
            Live {
                multi,
                overall,
                running: HashMap::new(),
            }
        });
        Console {
            width,
            colour: colour_wanted(tty),
            inner: Mutex::new(Inner {
                out: BufWriter::with_capacity(64 * 1024, std::io::stdout()),
                live,
                pending: String::new(),
            }),
        }
    }

    fn prefix(&self, index: usize, name: &str) -> String {
        let pad = self.width.saturating_sub(name.chars().count());
        if self.colour {
            let c = COLOURS[index % COLOURS.len()];
            format!("\x1b[1;{c}m{name}\x1b[0m{:pad$} \x1b[2m|\x1b[0m ", "")
        } else {
            format!("{name}{:pad$} | ", "")
        }
    }

    fn status_text(&self, r: &JobResult) -> String {
        let text = match r.status {
            JobStatus::Failed if r.allow_failure => "failed (allowed)".to_string(),
            s => s.as_str().to_string(),
        };
        if !self.colour {
            return text;
        }
        let c = match r.status {
            JobStatus::Success => "32",
            JobStatus::Failed if r.allow_failure => "33",
            JobStatus::Failed => "31",
            JobStatus::Canceled => "35",
            _ => "2",
        };
        format!("\x1b[{c}m{text}\x1b[0m")
    }

    /// Handle one event of the run.
    pub fn event(&self, ev: Event<'_>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        match ev {
            Event::JobLine { index, name, line } => {
                let text = format!("{}{line}\n", self.prefix(index, name));
                inner.emit(&text);
            }
            Event::Flush => inner.flush(),
            Event::JobStarted {
                index,
                name,
                attempt,
            } => {
                if attempt > 1 {
                    let text = format!("{}(attempt {attempt})\n", self.prefix(index, name));
                    inner.emit(&text);
                }
                if let Some(live) = &mut inner.live {
                    live.running.entry(index).or_insert_with(|| {
                        let bar = live.multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_message(name.to_string());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    });
                    live.overall
                        .set_message(format!("{} running", live.running.len()));
                }
                inner.flush();
            }
            Event::JobFinished { index, result } => {
                let text = format!(
                    "{}{} in {:.1}s\n",
                    self.prefix(index, &result.name),
                    self.status_text(result),
                    result.duration_ms as f64 / 1000.0
                );
                inner.emit(&text);
                if let Some(live) = &mut inner.live {
                    if let Some(bar) = live.running.remove(&index) {
                        bar.finish_and_clear();
                        live.multi.remove(&bar);
                    }
                    live.overall.inc(1);
                    live.overall
                        .set_message(format!("{} running", live.running.len()));
                }
                inner.flush();
            }
        }
    }

    /// A line of Slipway's own (cancel notices), not from a job.
    pub fn note(&self, text: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.emit(&format!("{text}\n"));
            inner.flush();
        }
    }

    /// End the live view and print the summary table.
    pub fn summary(&self, result: &RunResult, logs: &std::path::Path) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.flush();
        if let Some(live) = inner.live.take() {
            for (_, bar) in live.running {
                bar.finish_and_clear();
            }
            live.overall.finish_and_clear();
            let _ = live.multi.clear();
        }
        let w_name = result
            .jobs
            .iter()
            .map(|j| j.name.chars().count())
            .max()
            .unwrap_or(3)
            .max(3);
        let w_stage = result
            .jobs
            .iter()
            .map(|j| j.stage.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut text = String::from("\n");
        text.push_str(&format!(
            "{:w_name$}  {:w_stage$}  {:16}  DURATION\n",
            "JOB", "STAGE", "STATUS"
        ));
        for j in &result.jobs {
            let status = self.status_text(j);
            // Colour codes take no room on screen: pad by the visible text.
            let visible = match j.status {
                JobStatus::Failed if j.allow_failure => 16,
                s => s.as_str().len(),
            };
            let pad = 16usize.saturating_sub(visible);
            let duration = if j.attempts == 0 {
                "-".to_string()
            } else {
                format!("{:.1}s", j.duration_ms as f64 / 1000.0)
            };
            text.push_str(&format!(
                "{:w_name$}  {:w_stage$}  {status}{:pad$}  {duration}\n",
                j.name, j.stage, ""
            ));
        }
        let blocked: Vec<&str> = result
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Manual && !j.allow_failure)
            .map(|j| j.name.as_str())
            .collect();
        text.push_str(&format!(
            "\npipeline {} in {:.1}s (logs in {})\n",
            result.status.as_str(),
            result.duration_ms as f64 / 1000.0,
            logs.display()
        ));
        if result.status == PipelineStatus::Blocked && !blocked.is_empty() {
            text.push_str(&format!(
                "manual job{} waiting: {} (play with --manual NAME)\n",
                if blocked.len() == 1 { "" } else { "s" },
                blocked.join(", ")
            ));
        }
        let _ = inner.out.write_all(text.as_bytes());
        let _ = inner.out.flush();
    }
}

impl Inner {
    fn emit(&mut self, text: &str) {
        if self.live.is_some() {
            self.pending.push_str(text);
        } else {
            let _ = self.out.write_all(text.as_bytes());
        }
    }

    fn flush(&mut self) {
        if let Some(live) = &self.live {
            if !self.pending.is_empty() {
                let text = std::mem::take(&mut self.pending);
                let out = &mut self.out;
                live.multi.suspend(|| {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                });
            }
        } else {
            let _ = self.out.flush();
        }
    }
}
