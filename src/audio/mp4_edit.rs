//! Finds where the recording starts and ends inside an MP4/M4A's decoded AAC.
//!
//! AAC encoders prime the decoder with 1024 (ffmpeg) or 2112 (Apple) samples of delay and pad the
//! last frame. Files say so in one of two places: the audio track's edit list (`elst`), or
//! iTunes' `iTunSMPB` tag. symphonia's MP4 reader applies neither, so without this every Safari
//! recording would start 21–44 ms late and run long by up to a frame. Fragmented MP4 (what live
//! recorders write: an empty `moov`, then `moof`/`mdat` pairs) often says neither; there we remove
//! the AAC encoder delay of 1024 samples that ffmpeg-family encoders use, and say so.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Which decoded samples belong to the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioEdit {
    /// Samples to drop at the start (encoder priming).
    pub skip: u64,
    /// Samples to keep after the skip, when the edit says.
    pub keep: Option<u64>,
    /// The rate `skip` and `keep` count at: the track's media timescale, which for HE-AAC is
    /// twice the rate of the AAC core that is decoded. `None`: at the decoded rate.
    pub timescale: Option<u32>,
}

impl AudioEdit {
    /// `skip` and `keep` as samples at the decoded `rate`.
    pub fn at_rate(&self, rate: u32) -> (u64, Option<u64>) {
        let scale = |n: u64| match self.timescale {
            Some(ts) if ts > 0 && ts != rate => {
                (u128::from(n) * u128::from(rate) / u128::from(ts)) as u64
            }
            _ => n,
        };
        (scale(self.skip), self.keep.map(scale))
    }
}

/// Largest box we read into memory: edit lists and headers are tiny.
const MAX_SMALL_BOX: u64 = 1 << 16;

/// The AAC encoder delay of ffmpeg-family encoders (one frame), assumed for fragmented MP4 that
/// signals none.
pub const DEFAULT_AAC_PRIMING: u64 = 1024;

/// Where the recording lies in the decoded audio, from the file's own signalling; for a fragmented
/// file with AAC (`aac`) and no signalling, the default priming. `None` when nothing applies.
pub fn read_audio_edit(file: &mut File, aac: bool) -> Option<AudioEdit> {
    let len = file.metadata().ok()?.len();
    let moov = find_child(file, 0, len, b"moov")?;
    if let Some(edit) = read_elst(file, moov) {
        return Some(edit);
    }
    if let Some(edit) = read_itunsmpb(file, moov) {
        // iTunes counts in output samples, at the rate of the audio track's media timescale.
        let timescale = audio_mdia(file, moov).and_then(|m| read_mdhd_timescale(file, m));
        return Some(AudioEdit { timescale, ..edit });
    }
    let fragmented = find_child(file, moov.0, moov.1, b"mvex").is_some();
    (aac && fragmented).then_some(AudioEdit {
        skip: DEFAULT_AAC_PRIMING,
        keep: None,
        timescale: None,
    })
}

/// The `mdia` box of the first audio (`soun`) track.
fn audio_mdia(file: &mut File, moov: (u64, u64)) -> Option<(u64, u64)> {
    let mut pos = moov.0;
    while let Some(trak) = next_box(file, pos, moov.1) {
        pos = trak.end;
        if &trak.kind != b"trak" {
            continue;
        }
        let Some(mdia) = find_child(file, trak.body, trak.end, b"mdia") else {
            continue;
        };
        if read_handler(file, mdia) == Some(*b"soun") {
            return Some(mdia);
        }
    }
    None
}

/// The sample entry type (`mp4a`, `samr`, `Opus`, ...) of the first audio track: what to name
/// when no decoder takes the track (symphonia drops tracks whose sample entry it does not know).
pub fn audio_sample_entry(file: &mut File) -> Option<[u8; 4]> {
    let len = file.metadata().ok()?.len();
    let moov = find_child(file, 0, len, b"moov")?;
    let mdia = audio_mdia(file, moov)?;
    let minf = find_child(file, mdia.0, mdia.1, b"minf")?;
    let stbl = find_child(file, minf.0, minf.1, b"stbl")?;
    let stsd = find_child(file, stbl.0, stbl.1, b"stsd")?;
    // `stsd` is a full box with an entry count: eight bytes before the first entry.
    next_box(file, stsd.0 + 8, stsd.1).map(|entry| entry.kind)
}

/// The edit list of the first audio (`soun`) track.
fn read_elst(file: &mut File, moov: (u64, u64)) -> Option<AudioEdit> {
    let movie_timescale = read_mvhd_timescale(file, moov)?;
    let mut pos = moov.0;
    while let Some(trak) = next_box(file, pos, moov.1) {
        pos = trak.end;
        if &trak.kind != b"trak" {
            continue;
        }
        let Some(mdia) = find_child(file, trak.body, trak.end, b"mdia") else {
            continue;
        };
        if read_handler(file, mdia)? != *b"soun" {
            continue;
        }
        let media_timescale = read_mdhd_timescale(file, mdia)?;
        let edts = find_child(file, trak.body, trak.end, b"edts")?;
        let elst = find_child(file, edts.0, edts.1, b"elst")?;
        let body = read_small(file, elst)?;
        return parse_elst(&body, movie_timescale, media_timescale);
    }
    None
}

/// iTunes' gapless tag: `moov/udta/meta/ilst/----` named `iTunSMPB`.
fn read_itunsmpb(file: &mut File, moov: (u64, u64)) -> Option<AudioEdit> {
    let udta = find_child(file, moov.0, moov.1, b"udta")?;
    let meta = find_child(file, udta.0, udta.1, b"meta")?;
    // `meta` is a full box: four bytes of version and flags before its children.
    let ilst = find_child(file, meta.0 + 4, meta.1, b"ilst")?;
    let mut pos = ilst.0;
    while let Some(item) = next_box(file, pos, ilst.1) {
        pos = item.end;
        if &item.kind != b"----" {
            continue;
        }
        let body = read_small(file, (item.body, item.end))?;
        if let Some(edit) = parse_freeform_itunsmpb(&body) {
            return Some(edit);
        }
    }
    None
}

/// Parses a freeform (`----`) item's children (`mean`, `name`, `data`): when the name is
/// `iTunSMPB`, the data is text like ` 00000000 00000840 000001CA 0000000000A8A5F6 ...`, whose
/// second, third and fourth hex fields are the priming, the padding and the real sample count.
fn parse_freeform_itunsmpb(body: &[u8]) -> Option<AudioEdit> {
    let mut name_ok = false;
    let mut text = None;
    let mut pos = 0usize;
    while pos + 8 <= body.len() {
        let size = u32::from_be_bytes(body[pos..pos + 4].try_into().ok()?) as usize;
        if size < 8 || pos + size > body.len() {
            return None;
        }
        let payload = &body[pos + 8..pos + size];
        match &body[pos + 4..pos + 8] {
            // `name` and `data` are full boxes; `data` also has a four-byte locale.
            b"name" => name_ok = payload.get(4..) == Some(b"iTunSMPB".as_slice()),
            b"data" => text = payload.get(8..),
            _ => {}
        }
        pos += size;
    }
    if !name_ok {
        return None;
    }
    let text = std::str::from_utf8(text?).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| u64::from_str_radix(f, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let (skip, count) = (*fields.get(1)?, *fields.get(3)?);
    Some(AudioEdit {
        skip,
        keep: (count > 0).then_some(count),
        timescale: None,
    })
}

/// Interprets an `elst` body: the first non-empty edit's media time is the priming, its segment
/// duration (in movie time) the length of the recording.
fn parse_elst(body: &[u8], movie_timescale: u32, media_timescale: u32) -> Option<AudioEdit> {
    let version = *body.first()?;
    let count = u32::from_be_bytes(body.get(4..8)?.try_into().ok()?) as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    for i in 0..count {
        let e = body.get(8 + i * entry_len..8 + (i + 1) * entry_len)?;
        let (segment_duration, media_time) = if version == 1 {
            (
                u64::from_be_bytes(e[0..8].try_into().ok()?),
                i64::from_be_bytes(e[8..16].try_into().ok()?),
            )
        } else {
            (
                u64::from(u32::from_be_bytes(e[0..4].try_into().ok()?)),
                i64::from(i32::from_be_bytes(e[4..8].try_into().ok()?)),
            )
        };
        if media_time < 0 {
            continue; // an empty edit: a presentation delay, not priming
        }
        let keep = (segment_duration > 0 && movie_timescale > 0).then(|| {
            (u128::from(segment_duration) * u128::from(media_timescale)
                / u128::from(movie_timescale)) as u64
        });
        return Some(AudioEdit {
            skip: media_time as u64,
            keep,
            timescale: Some(media_timescale),
        });
    }
    None
}

struct BoxHeader {
    kind: [u8; 4],
    body: u64,
    end: u64,
}

/// Reads the box header at `pos`, if a whole box fits before `limit`.
fn next_box(file: &mut File, pos: u64, limit: u64) -> Option<BoxHeader> {
    if pos + 8 > limit {
        return None;
    }
    file.seek(SeekFrom::Start(pos)).ok()?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head).ok()?;
    let size32 = u32::from_be_bytes(head[0..4].try_into().ok()?);
    let kind: [u8; 4] = head[4..8].try_into().ok()?;
    let (size, header_len) = match size32 {
        0 => (limit - pos, 8),
        1 => {
            let mut large = [0u8; 8];
            file.read_exact(&mut large).ok()?;
            (u64::from_be_bytes(large), 16)
        }
        n => (u64::from(n), 8),
    };
    if size < header_len || pos.checked_add(size)? > limit {
        return None;
    }
    Some(BoxHeader {
        kind,
        body: pos + header_len,
        end: pos + size,
    })
}

/// The body range of the first child box of type `kind` within `[start, end)`.
fn find_child(file: &mut File, start: u64, end: u64, kind: &[u8; 4]) -> Option<(u64, u64)> {
    let mut pos = start;
    while let Some(b) = next_box(file, pos, end) {
        if &b.kind == kind {
            return Some((b.body, b.end));
        }
        pos = b.end;
    }
    None
}

fn read_small(file: &mut File, (start, end): (u64, u64)) -> Option<Vec<u8>> {
    if end - start > MAX_SMALL_BOX {
        return None;
    }
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut body = vec![0u8; (end - start) as usize];
    file.read_exact(&mut body).ok()?;
    Some(body)
}

/// Timescale of an `mvhd` or `mdhd` body: after version/flags and the creation and modification
/// times (32-bit in version 0, 64-bit in version 1).
fn header_timescale(body: &[u8]) -> Option<u32> {
    let at = if *body.first()? == 1 { 20 } else { 12 };
    Some(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

fn read_mvhd_timescale(file: &mut File, moov: (u64, u64)) -> Option<u32> {
    let mvhd = find_child(file, moov.0, moov.1, b"mvhd")?;
    header_timescale(&read_small(file, mvhd)?)
}

fn read_mdhd_timescale(file: &mut File, mdia: (u64, u64)) -> Option<u32> {
    let mdhd = find_child(file, mdia.0, mdia.1, b"mdhd")?;
    header_timescale(&read_small(file, mdhd)?)
}

/// The handler type of a `mdia` box (`soun`, `vide`, ...).
fn read_handler(file: &mut File, mdia: (u64, u64)) -> Option<[u8; 4]> {
    let hdlr = find_child(file, mdia.0, mdia.1, b"hdlr")?;
    let body = read_small(file, hdlr)?;
    body.get(8..12)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_0_edit_with_priming() {
        // One edit: 48000 movie ticks (1000/s) of media starting at 1024.
        let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1];
        body.extend_from_slice(&1000u32.to_be_bytes());
        body.extend_from_slice(&1024i32.to_be_bytes());
        body.extend_from_slice(&[0, 1, 0, 0]);
        let edit = parse_elst(&body, 1000, 48_000).unwrap();
        assert_eq!(
            edit,
            AudioEdit {
                skip: 1024,
                keep: Some(48_000),
                timescale: Some(48_000),
            }
        );
    }

    #[test]
    fn empty_edit_is_skipped() {
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 2];
        body.extend_from_slice(&500u64.to_be_bytes());
        body.extend_from_slice(&(-1i64).to_be_bytes());
        body.extend_from_slice(&[0, 1, 0, 0]);
        body.extend_from_slice(&2000u64.to_be_bytes());
        body.extend_from_slice(&2112i64.to_be_bytes());
        body.extend_from_slice(&[0, 1, 0, 0]);
        let edit = parse_elst(&body, 600, 44_100).unwrap();
        assert_eq!(edit.skip, 2112);
        assert_eq!(edit.keep, Some(2000 * 44_100 / 600));
    }

    #[test]
    fn itunes_gapless_tag() {
        let text = b" 00000000 00000840 000001CA 0000000000A8A5F6 00000000 00000000";
        let mut body = Vec::new();
        for (kind, payload) in [
            (b"mean", [&[0u8; 4][..], b"com.apple.iTunes"].concat()),
            (b"name", [&[0u8; 4][..], b"iTunSMPB"].concat()),
            (b"data", [&[0u8, 0, 0, 1, 0, 0, 0, 0][..], text].concat()),
        ] {
            body.extend_from_slice(&((payload.len() + 8) as u32).to_be_bytes());
            body.extend_from_slice(kind);
            body.extend_from_slice(&payload);
        }
        let edit = parse_freeform_itunsmpb(&body).unwrap();
        assert_eq!(edit.skip, 0x840);
        assert_eq!(edit.keep, Some(0xA8A5F6));
        // Another freeform tag is not ours.
        let other: Vec<u8> = body
            .iter()
            .map(|&b| if b == b'S' { b'X' } else { b })
            .collect();
        assert_eq!(parse_freeform_itunsmpb(&other), None);
    }

    #[test]
    fn an_edit_in_the_doubled_timescale_of_he_aac_counts_core_samples() {
        let edit = AudioEdit {
            skip: 4096,
            keep: Some(88_200),
            timescale: Some(44_100),
        };
        assert_eq!(edit.at_rate(22_050), (2048, Some(44_100)));
        assert_eq!(edit.at_rate(44_100), (4096, Some(88_200)));
        let decoded = AudioEdit {
            timescale: None,
            ..edit
        };
        assert_eq!(decoded.at_rate(22_050), (4096, Some(88_200)));
    }

    #[test]
    fn truncated_body_is_none() {
        assert_eq!(
            parse_elst(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0], 1000, 1000),
            None
        );
    }
}
