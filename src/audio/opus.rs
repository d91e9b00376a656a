//! Opus decoding with the bundled libopus, to mono.
//!
//! libopus folds stereo to mono itself and can render at 48 kHz (the canonical output) or
//! straight at 16 kHz, which skips a resampling pass (ARCHITECTURE.md: the bundled libopus 1.6 is
//! five times faster than Debian's 1.3). Long recordings are decoded on several cores: the packet
//! stream is cut into segments,
//! and each segment is decoded by a fresh decoder that first decodes and discards a pre-roll of
//! the preceding packets (RFC 7845 recommends 80 ms), by which point its state has converged on
//! the sequential decoder's.

use std::ffi::CStr;
use std::ptr::NonNull;

use opusic_sys as ffi;

/// Opus timestamps (pre-skip, granule positions) always count 48 kHz samples.
pub const OPUS_CLOCK: u32 = 48_000;
/// The rates libopus can render natively.
pub const NATIVE_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Packets decoded and discarded before a segment that does not start the stream. Eight 20 ms
/// packets: twice RFC 7845's 80 ms, which costs 1.6 % at 10 s segments.
pub const PRE_ROLL_PACKETS: usize = 8;

/// What the `OpusHead` identification header tells us (RFC 7845 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    /// Samples at 48 kHz to discard from the start of the decoded stream.
    pub pre_skip: u16,
    pub input_sample_rate: u32,
    pub mapping_family: u8,
}

impl OpusHead {
    /// Parses `OpusHead` from a track's codec private data (Ogg and Matroska carry the same bytes).
    pub fn parse(bytes: &[u8]) -> Option<OpusHead> {
        Self::parse_with(bytes, false)
    }

    /// Parses what symphonia's MP4 reader hands over for Opus: the magic `OpusHead` followed by
    /// the body of the `dOps` box, whose fields are big-endian (ISO Opus mapping, 4.3.2), not
    /// little-endian as in `OpusHead`. Read as `OpusHead`, pre-skip 312 becomes 14337 and the
    /// first 292 ms of the recording vanish.
    pub fn parse_dops(bytes: &[u8]) -> Option<OpusHead> {
        Self::parse_with(bytes, true)
    }

    /// Both layouts share the field order; only the byte order of the multi-byte fields differs.
    fn parse_with(bytes: &[u8], big_endian: bool) -> Option<OpusHead> {
        if bytes.len() < 19 || &bytes[..8] != b"OpusHead" {
            return None;
        }
        let (pre_skip, input_sample_rate) = if big_endian {
            (
                u16::from_be_bytes([bytes[10], bytes[11]]),
                u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            )
        } else {
            (
                u16::from_le_bytes([bytes[10], bytes[11]]),
                u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            )
        };
        Some(OpusHead {
            channels: bytes[9],
            pre_skip,
            input_sample_rate,
            mapping_family: bytes[18],
        })
    }
}

/// One libopus decoder that renders mono at a fixed rate (stereo streams are folded by libopus).
pub struct OpusDecoder {
    state: NonNull<ffi::OpusDecoder>,
    pcm: Vec<f32>,
}

/// Longest possible packet (120 ms) at `rate`.
fn max_frames(rate: u32) -> usize {
    rate as usize * 120 / 1000
}

// SAFETY: the decoder state is plain memory owned by this value and used through `&mut self` only.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    /// A decoder rendering at `rate`, one of [`NATIVE_RATES`].
    pub fn new(rate: u32) -> Result<OpusDecoder, String> {
        let mut err = 0;
        // SAFETY: libopus validates the rate and channel count and reports failure through `err`.
        let state = unsafe { ffi::opus_decoder_create(rate as i32, 1, &mut err) };
        match NonNull::new(state) {
            Some(state) if err == ffi::OPUS_OK => Ok(OpusDecoder {
                state,
                pcm: vec![0.0; max_frames(rate)],
            }),
            _ => Err(format!(
                "libopus could not create a decoder: {}",
                strerror(err)
            )),
        }
    }

    /// Decodes one packet into mono samples; the slice lives until the next call.
    /// A corrupt packet is an `Err` and leaves the decoder usable.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[f32], String> {
        let len = i32::try_from(packet.len()).map_err(|_| "packet too large".to_string())?;
        // SAFETY: `pcm` holds `pcm.len()` floats, the frame_size we pass; `packet` is valid for
        // `len` bytes.
        let n = unsafe {
            ffi::opus_decode_float(
                self.state.as_ptr(),
                packet.as_ptr(),
                len,
                self.pcm.as_mut_ptr(),
                self.pcm.len() as i32,
                0,
            )
        };
        if n < 0 {
            return Err(strerror(n));
        }
        Ok(&self.pcm[..n as usize])
    }

    /// Conceals a lost packet of `frames` samples (libopus packet-loss concealment), so a
    /// corrupt packet keeps its place on the timeline instead of shifting everything after it.
    pub fn conceal(&mut self, frames: usize) -> &[f32] {
        let frames = frames.clamp(1, self.pcm.len());
        // SAFETY: a null packet asks libopus for `frames` samples of concealment.
        let n = unsafe {
            ffi::opus_decode_float(
                self.state.as_ptr(),
                std::ptr::null(),
                0,
                self.pcm.as_mut_ptr(),
                frames as i32,
                0,
            )
        };
        if n < 0 {
            self.pcm[..frames].fill(0.0);
            return &self.pcm[..frames];
        }
        &self.pcm[..n as usize]
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create and destroyed exactly once.
        unsafe { ffi::opus_decoder_destroy(self.state.as_ptr()) }
    }
}

/// Number of samples at `rate` a packet decodes to, from its TOC byte alone.
pub fn packet_frames(packet: &[u8], rate: u32) -> Option<usize> {
    let len = i32::try_from(packet.len()).ok()?;
    // SAFETY: reads at most `len` bytes of `packet`.
    let n = unsafe { ffi::opus_packet_get_nb_samples(packet.as_ptr(), len, rate as i32) };
    (n > 0).then_some(n as usize)
}

/// The libopus version string, for the manifest's provenance.
pub fn libopus_version() -> String {
    // SAFETY: libopus returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::opus_get_version_string()) }
        .to_string_lossy()
        .into_owned()
}

fn strerror(code: i32) -> String {
    // SAFETY: libopus returns a static NUL-terminated string for every code.
    unsafe { CStr::from_ptr(ffi::opus_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// How much of a chained Ogg link to keep, at 48 kHz: each link is a recording of its own,
/// with its own pre-skip and its own end (RFC 7845 section 4 and 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTrim {
    pub skip_48k: u64,
    pub keep_48k: Option<u64>,
}

/// A run of consecutive packets that one worker decodes on its own.
pub struct Segment {
    pub index: usize,
    /// The packets just before this segment, decoded only to warm the decoder up.
    pub pre_roll: Vec<Box<[u8]>>,
    pub packets: Vec<Box<[u8]>>,
    /// What the packets decode to, at 48 kHz, from their TOC bytes.
    pub frames_48k: u64,
    /// Set when this segment starts a chained Ogg link after the first.
    pub starts_link: Option<LinkTrim>,
}

impl Segment {
    /// The first segment of a stream.
    pub fn first() -> Segment {
        Segment {
            index: 0,
            pre_roll: Vec::new(),
            packets: Vec::new(),
            frames_48k: 0,
            starts_link: None,
        }
    }

    /// The segment after this one, warmed up on this one's last [`PRE_ROLL_PACKETS`] packets.
    pub fn successor(&self) -> Segment {
        let from = self.packets.len().saturating_sub(PRE_ROLL_PACKETS);
        Segment {
            index: self.index + 1,
            pre_roll: self.packets[from..].to_vec(),
            ..Segment::first()
        }
    }
}

/// Audio per segment: 10 s. Segments are cut by duration, not by packet count, so the decoded
/// segments waiting in memory are bounded by audio time: 500 packets of 120 ms (a hostile or
/// merely low-rate stream) held 60 s each and took the peak to 145 MB.
pub const SEGMENT_FRAMES_48K: u64 = 10 * OPUS_CLOCK as u64;

/// Whether a segment holding `frames_48k` of audio is complete.
pub fn segment_full(frames_48k: u64) -> bool {
    frames_48k >= SEGMENT_FRAMES_48K
}

/// The decoded samples of one segment, and how many of its packets were corrupt.
pub struct DecodedSegment {
    pub index: usize,
    pub samples: Vec<f32>,
    pub corrupt_packets: u64,
    pub starts_link: Option<LinkTrim>,
}

/// Decodes a segment with a fresh decoder. Corrupt packets are concealed (same length as the
/// previous packet, 20 ms before the first) and counted.
pub fn decode_segment(segment: Segment, rate: u32) -> Result<DecodedSegment, String> {
    let mut decoder = OpusDecoder::new(rate)?;
    let mut last_frames = rate as usize / 50;
    for packet in &segment.pre_roll {
        if let Ok(pcm) = decoder.decode(packet) {
            last_frames = pcm.len();
        }
    }
    let ratio = u64::from(OPUS_CLOCK / rate.max(1));
    let mut samples =
        Vec::with_capacity((segment.frames_48k / ratio.max(1)) as usize + last_frames);
    let mut corrupt_packets = 0;
    for packet in &segment.packets {
        match decoder.decode(packet) {
            Ok(pcm) => {
                last_frames = pcm.len();
                samples.extend_from_slice(pcm);
            }
            Err(_) => {
                corrupt_packets += 1;
                let frames = packet_frames(packet, rate).unwrap_or(last_frames);
                samples.extend_from_slice(decoder.conceal(frames));
            }
        }
    }
    Ok(DecodedSegment {
        index: segment.index,
        samples,
        corrupt_packets,
        starts_link: segment.starts_link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_opus_head() {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
        let parsed = OpusHead::parse(&head).unwrap();
        assert_eq!(parsed.channels, 2);
        assert_eq!(parsed.pre_skip, 312);
        assert_eq!(parsed.input_sample_rate, 48_000);
        assert_eq!(parsed.mapping_family, 0);
        assert!(OpusHead::parse(b"OpusTags").is_none());
    }

    #[test]
    fn parses_the_big_endian_dops_of_mp4() {
        // What symphonia hands over for opus.mp4: the magic, then dOps' body as it is in the file.
        let mut dops = b"OpusHead".to_vec();
        dops.extend_from_slice(&[0, 1, 0x01, 0x38, 0, 0, 0xBB, 0x80, 0, 0, 0]);
        let parsed = OpusHead::parse_dops(&dops).unwrap();
        assert_eq!(parsed.pre_skip, 312);
        assert_eq!(parsed.input_sample_rate, 48_000);
        assert_eq!(parsed.channels, 1);
        assert_eq!(OpusHead::parse(&dops).unwrap().pre_skip, 14_337, "the bug");
    }

    #[test]
    fn segments_are_cut_by_audio_time_not_packet_count() {
        // 500 packets of 120 ms are a minute: far past one segment.
        let packet_120ms = [0x1B, 0x02];
        let per_packet = packet_frames(&packet_120ms, OPUS_CLOCK).unwrap() as u64;
        assert_eq!(per_packet, 5_760);
        assert!(!segment_full(83 * per_packet));
        assert!(segment_full(84 * per_packet));
    }

    #[test]
    fn garbage_packet_is_an_error_not_a_crash() {
        let mut decoder = OpusDecoder::new(16_000).unwrap();
        // TOC code 3 with a frame count of zero is invalid.
        assert!(decoder.decode(&[0x03, 0x00]).is_err());
        assert_eq!(decoder.conceal(320).len(), 320);
        assert!(libopus_version().contains("libopus"));
        assert!(
            OpusDecoder::new(44_100).is_err(),
            "libopus renders only its native rates"
        );
    }
}
