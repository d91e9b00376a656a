//! Mistakes in how a command was called, caught before any work starts.
//!
//! A usage error is the caller's to fix, not a failure to retry: the command prints
//! `error: <what to do>` and exits 2 (the status clap gives its own parse errors), while the
//! pipeline's `error[CODE]` lines keep 1 and 75. The value parsers plug into clap's
//! `value_parser`; the path checks run once the arguments are parsed, so `replay` learns that
//! `--out` cannot be written before it decodes and transcribes for minutes.

use std::fmt;
use std::path::{Path, PathBuf};

/// The exit status of a usage error.
pub const EXIT_USAGE: u8 = 2;

/// What the caller must change, as one sentence naming the option or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.0)
    }
}

/// A finite number; `NaN` and `inf` parse as floats but mean nothing as settings.
fn finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a number")),
    }
}

/// Seconds that must be at least one (`--max-chunk-s`): shorter chunks only multiply requests
/// (0 used to write one file per sample).
pub fn chunk_seconds(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v >= 1.0 {
        Ok(v)
    } else {
        Err(format!("{text} s is too short: give at least 1 second"))
    }
}

/// A positive duration in seconds (`--max-duration-s`).
pub fn positive_seconds(text: &str) -> Result<f64, String> {
    let v = finite(text)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{text} is not a positive number of seconds"))
    }
}

/// A count of at least one (`--threads`, `--max-input-mb`); 0 would mean no work or nothing
/// accepted.
pub fn at_least_one(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A normalisation target in dBFS: below full scale, above the noise floor of 16-bit audio.
pub fn target_dbfs(text: &str) -> Result<f32, String> {
    let v = finite(text)?;
    if (-60.0..=0.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(format!("{text} dBFS is outside -60 to 0"))
    }
}

/// A rate libopus can render at.
pub fn opus_rate(text: &str) -> Result<u32, String> {
    let rates = crate::audio::opus::NATIVE_RATES;
    match text.trim().parse::<u32>() {
        Ok(r) if rates.contains(&r) => Ok(r),
        _ => Err(format!(
            "libopus renders only at {} Hz (16000: direct, the default; 48000: then resampled)",
            rates.map(|r| r.to_string()).join(", ")
        )),
    }
}

/// An input that must be a readable file (`what`: "INPUT", "--transcript").
pub fn readable_file(what: &str, path: &Path) -> Result<(), UsageError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(_) => Err(UsageError(format!("{what} {shown}: no such file"))),
        Ok(m) if m.is_dir() => Err(UsageError(format!(
            "{what} {shown} is a directory, not a file"
        ))),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| UsageError(format!("{what} {shown} cannot be read: {}", plain(&e)))),
    }
}

/// A file the command will write (`--out`, `--report`): not a directory, in a directory that
/// exists and that we may create files in. Probed with a temporary file there, removed at once,
/// so an existing result is never touched before the new one is ready.
pub fn writable_file(what: &str, path: &Path) -> Result<(), UsageError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(UsageError(format!(
            "{what} {shown} is a directory: give a file name"
        )));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "{what} {shown}: the directory {} does not exist",
            dir.display()
        )));
    }
    probe_dir(&dir).map_err(|e| UsageError(format!("{what} {shown} cannot be written: {e}")))
}

/// A directory the command will create or fill (`prepare --out`): an existing directory, or a
/// new one whose nearest existing ancestor is a directory we may write in.
pub fn output_dir(what: &str, path: &Path) -> Result<(), UsageError> {
    let shown = path.display();
    if path.exists() && !path.is_dir() {
        return Err(UsageError(format!(
            "{what} {shown} is a file: give a directory (it is created if missing)"
        )));
    }
    let mut existing = path.to_path_buf();
    while !existing.exists() {
        existing = parent_dir(&existing);
    }
    if !existing.is_dir() {
        return Err(UsageError(format!(
            "{what} {shown}: {} is a file, so the directory cannot be created",
            existing.display()
        )));
    }
    probe_dir(&existing).map_err(|e| UsageError(format!("{what} {shown} cannot be written: {e}")))
}

/// The directory a path lies in ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => PathBuf::from("/"),
    }
}

/// Creates and removes a temporary file in `dir`: the one reliable test of permission (root,
/// read-only mounts, ACLs).
fn probe_dir(dir: &Path) -> Result<(), String> {
    tempfile::Builder::new()
        .prefix(".audio-worker-probe-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| plain(&e))
}

/// An I/O error's text without the "(os error 13)" suffix users cannot act on.
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_that_mean_nothing_are_refused() {
        for bad in ["0", "-1", "0.5", "NaN", "inf", "ten"] {
            assert!(chunk_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(chunk_seconds("600"), Ok(600.0));
        for bad in ["0", "-1", "NaN"] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
        assert!(at_least_one("0").is_err() && at_least_one("-2").is_err());
        assert_eq!(at_least_one("4"), Ok(4));
        for bad in ["NaN", "3", "-inf", "-100"] {
            assert!(target_dbfs(bad).is_err(), "{bad}");
        }
        assert_eq!(target_dbfs("-20"), Ok(-20.0));
        assert!(opus_rate("44100").is_err());
        assert_eq!(opus_rate("48000"), Ok(48_000));
    }

    #[test]
    fn files_are_named_when_they_cannot_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = readable_file("--transcript", &missing).unwrap_err();
        assert!(
            e.0.contains("nope.json") && e.0.contains("no such file"),
            "{e}"
        );
        assert!(readable_file("INPUT", dir.path()).is_err());

        let nowhere = dir.path().join("missing-dir/r.json");
        let e = writable_file("--out", &nowhere).unwrap_err();
        assert!(
            e.0.contains("missing-dir") && e.0.contains("does not exist"),
            "{e}"
        );
        assert!(writable_file("--out", dir.path()).is_err());
        assert!(writable_file("--out", &dir.path().join("r.json")).is_ok());

        let file = dir.path().join("taken");
        std::fs::write(&file, b"x").unwrap();
        let e = output_dir("--out", &file).unwrap_err();
        assert!(e.0.contains("is a file"), "{e}");
        assert!(output_dir("--out", &file.join("below")).is_err());
        assert!(output_dir("--out", &dir.path().join("new/deeper")).is_ok());
        // Nothing was left behind by the probes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
