//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gravity_pack::{Envelope, Labels, LocalStore, Locator, PackageOptions, PackageStore};

/// Deterministic content of `size` bytes for a locator: the same locator
/// always gets the same bytes, different locators different bytes.
pub fn content(loc: &str, size: usize) -> Vec<u8> {
    let seed = loc.as_bytes();
    let mut out = Vec::with_capacity(size);
    let mut i: u64 = 0;
    while out.len() < size {
        for &b in seed {
            out.push(b ^ (i as u8).wrapping_mul(31));
        }
        i += 1;
    }
    out.truncate(size);
    out
}

/// One `* loc SIZE labels` line of a seed listing.
pub struct SeedLine {
    /// The locator.
    pub locator: Locator,
    /// The size as printed.
    pub size_text: String,
    /// The labels.
    pub labels: Labels,
}

/// Parses the package lines of a seed listing.
pub fn parse_seed(text: &str) -> Vec<SeedLine> {
    text.lines()
        .filter_map(|l| l.strip_prefix("* "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let locator = Locator::parse(parts.next().unwrap()).unwrap();
            let size_text = parts.next().unwrap().to_string();
            let labels = Labels::parse(parts.next().unwrap_or("")).unwrap();
            SeedLine {
                locator,
                size_text,
                labels,
            }
        })
        .collect()
}

/// Byte size for a seed size text. Sizes in MB are scaled down by 1000
/// (`101MB` → 101000 bytes, listed as `101kB`); kB and B sizes are exact.
pub fn scaled_bytes(size_text: &str) -> usize {
    let (num, mult) = if let Some(n) = size_text.strip_suffix("MB") {
        (n, 1000.0)
    } else if let Some(n) = size_text.strip_suffix("kB") {
        (n, 1000.0)
    } else {
        (size_text.strip_suffix('B').unwrap(), 1.0)
    };
    (num.parse::<f64>().unwrap() * mult).round() as usize
}

/// The listing expected from our store for a seed listing: labels sorted
/// by key (Gravity prints them in random map order) and `MB` sizes shown as
/// `kB` because the test scales those packages down by 1000.
pub fn expected_listing(seed: &str) -> String {
    let mut out = String::new();
    for line in seed.lines() {
        if let Some(l) = line.strip_prefix("* ") {
            let mut parts = l.splitn(3, ' ');
            let loc = parts.next().unwrap();
            let size = parts.next().unwrap().replace("MB", "kB");
            let labels = Labels::parse(parts.next().unwrap_or("")).unwrap();
            out.push_str(&format!("* {loc} {size}"));
            if !labels.is_empty() {
                out.push_str(&format!(" {labels}"));
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Creates the seed packages in a store.
pub fn fill(store: &LocalStore, lines: &[SeedLine]) -> Vec<Envelope> {
    lines
        .iter()
        .map(|l| {
            let data = content(&l.locator.to_string(), scaled_bytes(&l.size_text));
            store
                .create(
                    &l.locator,
                    &mut data.as_slice(),
                    PackageOptions::labels(l.labels.clone()),
                )
                .unwrap()
        })
        .collect()
}
