//! Progress reporting. The library never prints; long operations report
//! through [`Progress`], which the CLI renders (progress bar, step lines).

/// Something that happened during a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent<'a> {
    /// A step worth a line of output, e.g.
    /// `Importing cluster image telekube v5.5.50-dev.9`.
    Step(&'a str),
    /// A byte-counted transfer starts; `total_bytes` is what will be
    /// reported through [`ProgressEvent::Bytes`].
    Begin {
        /// What is being transferred.
        label: &'a str,
        /// Total bytes expected.
        total_bytes: u64,
    },
    /// That many more bytes were processed.
    Bytes(u64),
    /// The transfer started by the last `Begin` has ended.
    End,
}

/// Receives [`ProgressEvent`]s. Implementations must be cheap: `Bytes` is
/// reported for every buffer (about every MiB).
pub trait Progress: Send + Sync {
    /// Called for each event.
    fn on(&self, event: ProgressEvent<'_>);
}

/// Ignores all progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn on(&self, _event: ProgressEvent<'_>) {}
}

impl<F: Fn(ProgressEvent<'_>) + Send + Sync> Progress for F {
    fn on(&self, event: ProgressEvent<'_>) {
        self(event)
    }
}
