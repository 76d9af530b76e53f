//! Copying packages between stores.
//!
//! A node pulls from the cluster store only what it needs; an upload pushes
//! an image's packages into the cluster store. In both cases a blob crosses
//! only when the destination lacks that hash, and a package that is already
//! there with the same content is skipped.

use crate::digest::Digest;
use crate::error::Result;
use crate::labels::Labels;
use crate::locator::Locator;
use crate::package::Envelope;
use crate::progress::{Progress, ProgressEvent};
use crate::store::{PackageStore, PutOutcome, WriteMode};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// What to do when the destination has the locator:
    /// [`WriteMode::KeepIdentical`] (default) skips identical content and
    /// refuses different content; [`WriteMode::Upsert`] overwrites.
    pub mode: WriteMode,
    /// Labels added to (or overriding) the source labels on the copies.
    pub add_labels: Labels,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            mode: WriteMode::KeepIdentical,
            add_labels: Labels::new(),
        }
    }
}

/// One package copied by [`pull()`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The package.
    pub locator: Locator,
    /// Its blob.
    pub digest: Digest,
    /// Bytes of content transferred (0 when the destination had the blob).
    pub bytes_transferred: u64,
}

/// What [`pull()`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Packages written to the destination.
    pub copied: Vec<Copied>,
    /// Packages the destination already had with the same content.
    pub skipped: Vec<Locator>,
}

impl PullReport {
    /// Total content bytes transferred.
    pub fn bytes_transferred(&self) -> u64 {
        self.copied.iter().map(|c| c.bytes_transferred).sum()
    }
}

/// Copies `locators` from `src` to `dst` with their labels (plus
/// `opts.add_labels`), type, manifest and creation time. Content is
/// verified against the source's hash as it is written.
pub fn pull(
    src: &dyn PackageStore,
    dst: &dyn PackageStore,
    locators: &[Locator],
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullReport> {
    // First the packages whose content the destination holds already: their
    // metadata goes in one batch (one durable commit for a local store)
    // instead of one commit each. Then the missing content, streamed.
    let mut outcomes: Vec<Option<(Locator, PutOutcome, Digest, u64)>> = vec![None; locators.len()];
    let mut present: Vec<(usize, Envelope)> = Vec::new();
    let mut missing: Vec<(usize, Envelope)> = Vec::new();
    for (i, loc) in locators.iter().enumerate() {
        let mut env = src.envelope(loc)?;
        if opts.mode != WriteMode::Upsert
            && let Ok(existing) = dst.envelope(loc)
            && existing.sha256 == env.sha256
        {
            outcomes[i] = Some((loc.clone(), PutOutcome::Unchanged, env.sha256, 0));
            continue;
        }
        env.labels.apply(&opts.add_labels, &[]);
        if dst.has_blob(&env.sha256)? {
            present.push((i, env));
        } else {
            missing.push((i, env));
        }
    }
    let batch: Vec<&Envelope> = present.iter().map(|(_, e)| e).collect();
    for ((i, env), outcome) in present.iter().zip(dst.put_present(&batch, opts.mode)?) {
        outcomes[*i] = Some((env.locator.clone(), outcome, env.sha256, 0));
    }
    for (i, env) in missing {
        let loc = &locators[i];
        // An earlier package of this pull may have brought the same blob.
        if dst.has_blob(&env.sha256)? {
            let o = dst.put(&env, None, opts.mode)?;
            outcomes[i] = Some((env.locator.clone(), o, env.sha256, 0));
            continue;
        }
        let (_, mut reader) = src.read(loc)?;
        progress.on(ProgressEvent::Begin {
            label: &loc.to_string(),
            total_bytes: env.size_bytes,
        });
        let mut counting = CountingReader {
            inner: &mut reader,
            progress,
        };
        let o = dst.put(&env, Some(&mut counting), opts.mode)?;
        progress.on(ProgressEvent::End);
        outcomes[i] = Some((env.locator.clone(), o, env.sha256, env.size_bytes));
    }
    let mut report = PullReport::default();
    for (locator, outcome, digest, bytes) in outcomes.into_iter().flatten() {
        if outcome == PutOutcome::Unchanged {
            report.skipped.push(locator);
        } else {
            report.copied.push(Copied {
                locator,
                digest,
                bytes_transferred: bytes,
            });
        }
    }
    Ok(report)
}

pub(crate) struct CountingReader<'a, R: ?Sized> {
    pub(crate) inner: &'a mut R,
    pub(crate) progress: &'a dyn Progress,
}

impl<R: std::io::Read + ?Sized> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.progress.on(ProgressEvent::Bytes(n as u64));
        }
        Ok(n)
    }
}
