//! The command log: every `gravity` command appends what it did (its
//! command line, phase transitions, errors) to `<state-dir>/gravity.log`,
//! one timestamped line each, so that `gravity report` can collect it.
//!
//! Lines look like `2020-08-02T00:19:06.123Z 1234 command gravity plan
//! execute --phase /init`; the fields are the UTC time (RFC 3339), the pid,
//! a kind (`command`, `phase`, `error`, `exit`) and free text.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use chrono::{SecondsFormat, Utc};

static LOG: OnceLock<Mutex<Option<File>>> = OnceLock::new();

/// Opens the log in `state_dir` (creating the directory), replacing the
/// one open before. Failing to open it never stops a command: the log is
/// diagnostics, not state.
pub fn init(state_dir: &Path) {
    if std::fs::create_dir_all(state_dir).is_err() {
        return;
    }
    if let Ok(f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("gravity.log"))
        && let Ok(mut slot) = LOG.get_or_init(|| Mutex::new(None)).lock()
    {
        *slot = Some(f);
    }
}

/// Appends one line of the given kind. Newlines in `text` are escaped so
/// that every entry stays one line.
pub fn line(kind: &str, text: &str) {
    let Some(log) = LOG.get() else { return };
    let entry = format!(
        "{} {} {kind} {}\n",
        Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        std::process::id(),
        text.replace('\n', "\\n")
    );
    if let Ok(mut guard) = log.lock()
        && let Some(f) = guard.as_mut()
    {
        // One write per line: O_APPEND keeps lines of concurrent
        // processes whole.
        let _ = f.write_all(entry.as_bytes());
    }
}
