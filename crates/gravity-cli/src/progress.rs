//! Console progress in the seed's format.
//!
//! Each step is a UTC time, a TAB and the message
//! (`Sun Aug  2 03:40:04 UTC<TAB>Executing "/init/kevin-test1" locally`);
//! a heartbeat line is a TAB and `Still executing … (10 seconds elapsed)`;
//! a command ends with `Executing phase "/init" finished in 5 seconds`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use gravity_plan::render::format_time_seconds;
use gravity_plan::{Event, Location, PhasePath, ProgressSink};

/// Prints engine events as progress lines on stdout (and debug detail on
/// stderr), and a "Still …" heartbeat every 10 seconds per running phase.
pub struct Console {
    running: Mutex<HashMap<PhasePath, (String, Instant, u64)>>,
    debug: bool,
}

/// `<time>\t<message>` with the current time.
pub fn step(message: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}\t{message}", format_time_seconds(Utc::now()));
    let _ = out.flush();
}

/// go-humanize style relative time: `1 second`, `5 seconds`, `2 minutes`.
/// Under a second Gravity printed "now"; this prints "less than a second".
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    let unit = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    match s {
        0 => "less than a second".into(),
        1..=59 => unit(s, "second", "seconds"),
        60..=3599 => unit(s / 60, "minute", "minutes"),
        3600..=86399 => unit(s / 3600, "hour", "hours"),
        _ => unit(s / 86400, "day", "days"),
    }
}

fn where_(location: &Location) -> String {
    match location {
        Location::Local => "locally".into(),
        Location::Remote(n) => format!("on remote node {}", n.hostname),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl Console {
    /// A console sink; `debug` also prints every durable state change.
    pub fn new(debug: bool) -> Arc<Self> {
        Arc::new(Console {
            running: Mutex::new(HashMap::new()),
            debug,
        })
    }

    /// Starts the heartbeat task (stops when the sink is dropped).
    pub fn start_heartbeat(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let mut lines = Vec::new();
                {
                    let mut running = me.running.lock().unwrap();
                    for (msg, started, reported) in running.values_mut() {
                        let tens = started.elapsed().as_secs() / 10;
                        if tens > *reported {
                            *reported = tens;
                            lines.push(format!(
                                "\tStill {} ({} elapsed)",
                                lower_first(msg),
                                humanize(Duration::from_secs(tens * 10))
                            ));
                        }
                    }
                }
                let mut out = std::io::stdout().lock();
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
                let _ = out.flush();
            }
        });
    }

    fn begin(&self, phase: &PhasePath, msg: String) {
        step(&msg);
        self.running
            .lock()
            .unwrap()
            .insert(phase.clone(), (msg, Instant::now(), 0));
    }
}

impl ProgressSink for Console {
    fn event(&self, event: Event) {
        match event {
            Event::Executing { phase, location } => {
                let msg = format!("Executing {:?} {}", phase.as_str(), where_(&location));
                self.begin(&phase, msg);
            }
            Event::RollingBack { phase, location } => {
                let msg = format!("Rolling back {:?} {}", phase.as_str(), where_(&location));
                self.begin(&phase, msg);
            }
            Event::WouldRollBack { phase, location } => {
                println!(
                    "[DRY-RUN] Rolling back {:?} {}",
                    phase.as_str(),
                    where_(&location)
                );
            }
            Event::Finished { phase, error, .. } => {
                self.running.lock().unwrap().remove(&phase);
                if let (Some(e), true) = (error, self.debug) {
                    eprintln!("{} DEBU phase {phase} failed: {e}", Utc::now().to_rfc3339());
                }
            }
            Event::Message { phase, message } => {
                step(&format!("{phase}: {message}"));
            }
            Event::StateChange { phase, state } => {
                crate::cmdlog::line("phase", &format!("{phase} {state}"));
                if self.debug {
                    eprintln!(
                        "{} DEBU [FSM] Apply. change:StateChange(Phase={phase}, State={state})",
                        Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
            }
            Event::Skipped { phase } => {
                if self.debug {
                    eprintln!(
                        "{} DEBU [FSM] Skip completed phase {phase}",
                        Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizes_like_gravity() {
        assert_eq!(humanize(Duration::from_millis(300)), "less than a second");
        assert_eq!(humanize(Duration::from_secs(1)), "1 second");
        assert_eq!(humanize(Duration::from_secs(35)), "35 seconds");
        assert_eq!(humanize(Duration::from_secs(60)), "1 minute");
        assert_eq!(humanize(Duration::from_secs(150)), "2 minutes");
        assert_eq!(humanize(Duration::from_secs(7200)), "2 hours");
    }
}
