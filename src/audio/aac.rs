//! HE-AAC as an AAC-LC core: what phones record, decoded by a decoder without SBR.
//!
//! HE-AAC v1 (SBR) and v2 (SBR + parametric stereo) carry an AAC-LC stream at half the output
//! rate plus side information that rebuilds the upper band (and the stereo image). symphonia's
//! AAC decoder implements neither extension: it decodes the core of an implicitly signalled
//! stream (AOT 2 in the AudioSpecificConfig, SBR found only in the frames) and refuses an
//! explicitly signalled one (AOT 5 or 29) as "too complex". The core holds everything below
//! a quarter of the output rate (11 kHz for 44.1 kHz), which covers the 8 kHz band that 16 kHz
//! transcription keeps, so for an explicit stream we hand the decoder the core's own
//! AudioSpecificConfig. The output rate is then the core's, which the decoder reports
//! (decode/symphonia.rs resamples at the rate of each decoded buffer, never the container's).

/// Audio object types (ISO/IEC 14496-3, 1.5.1.1).
const AOT_LC: u32 = 2;
const AOT_SBR: u32 = 5;
const AOT_PS: u32 = 29;
/// The sampling-frequency index that says "an explicit 24-bit rate follows".
const EXPLICIT_RATE: u32 = 15;

/// An AudioSpecificConfig for the AAC-LC core of `asc` when `asc` signals SBR or PS explicitly
/// (hierarchical: AOT 5/29, or backward compatible: AOT 2 then the 0x2B7 sync extension);
/// `None` when `asc` is already plain or is not AAC-LC underneath.
pub fn core_config(asc: &[u8]) -> Option<Vec<u8>> {
    let mut bits = Bits::new(asc);
    let first = bits.object_type()?;
    let rate = bits.rate_field()?;
    let channels = bits.take(4)?;
    let core = if first == AOT_SBR || first == AOT_PS {
        bits.rate_field()?; // the extension (output) rate
        bits.object_type()?
    } else if first == AOT_LC && has_sync_extension(asc) {
        AOT_LC
    } else {
        return None;
    };
    (core == AOT_LC).then(|| lc_config(rate, channels))
}

/// Whether the backward-compatible SBR signalling (sync word 0x2B7, 11 bits) follows a plain
/// 16-bit LC config.
fn has_sync_extension(asc: &[u8]) -> bool {
    let mut bits = Bits::new(asc);
    bits.take(16).is_some() && bits.take(11) == Some(0x2B7)
}

/// A plain AAC-LC AudioSpecificConfig: AOT 2, the rate field as given, the channel
/// configuration, and a GASpecificConfig of 1024-sample frames without extensions.
fn lc_config((index, explicit): (u32, Option<u32>), channels: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(5, AOT_LC);
    w.put(4, index);
    if let Some(rate) = explicit {
        w.put(24, rate);
    }
    w.put(4, channels);
    w.put(3, 0);
    w.finish()
}

/// A big-endian bit reader over a short byte string.
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Bits { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.bytes.get(self.pos / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    /// Five bits, or 32 + six more when the five are all ones.
    fn object_type(&mut self) -> Option<u32> {
        match self.take(5)? {
            31 => Some(32 + self.take(6)?),
            aot => Some(aot),
        }
    }

    /// The sampling-frequency index and, for index 15, the explicit rate.
    fn rate_field(&mut self) -> Option<(u32, Option<u32>)> {
        let index = self.take(4)?;
        let explicit = if index == EXPLICIT_RATE {
            Some(self.take(24)?)
        } else {
            None
        };
        Some((index, explicit))
    }
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn put(&mut self, n: usize, value: u32) {
        for i in (0..n).rev() {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> i) & 1) as u8;
            *self.bytes.last_mut().expect("pushed") |= bit << (7 - self.bits % 8);
            self.bits += 1;
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AOT 2, 22.05 kHz (index 7), mono, plain GASpecificConfig.
    const LC_22K_MONO: [u8; 2] = [0x13, 0x88];

    #[test]
    fn explicit_he_aac_v1_and_v2_become_their_core() {
        // AOT 5 / 29, index 7 (22.05 kHz core), mono, extension index 4 (44.1 kHz), AOT 2.
        assert_eq!(
            core_config(&[0x2B, 0x8A, 0x08, 0x00]),
            Some(LC_22K_MONO.to_vec())
        );
        assert_eq!(
            core_config(&[0xEB, 0x8A, 0x08, 0x00]),
            Some(LC_22K_MONO.to_vec())
        );
    }

    #[test]
    fn backward_compatible_signalling_becomes_plain() {
        // LC 22.05 kHz mono, then sync 0x2B7, AOT 5, sbrPresentFlag 1, extension index 4.
        let asc = [0x13, 0x88, 0x56, 0xE5, 0xA0];
        assert_eq!(core_config(&asc), Some(LC_22K_MONO.to_vec()));
    }

    #[test]
    fn plain_configs_and_other_codecs_are_left_alone() {
        assert_eq!(core_config(&LC_22K_MONO), None);
        assert_eq!(core_config(&[0x11, 0x90]), None); // LC 48 kHz mono
        assert_eq!(core_config(&[0x0A, 0x10]), None); // AOT 1 (Main)
        assert_eq!(core_config(&[]), None);
        assert_eq!(core_config(&[0x2B]), None); // cut short
    }

    #[test]
    fn an_explicit_core_rate_is_kept() {
        // AOT 5, index 15 + 24-bit 22050, mono, extension index 4, AOT 2.
        let mut w = BitWriter::default();
        for (n, v) in [
            (5, 5),
            (4, 15),
            (24, 22_050),
            (4, 1),
            (4, 4),
            (5, 2),
            (3, 0),
        ] {
            w.put(n, v);
        }
        let core = core_config(&w.finish()).unwrap();
        let mut bits = Bits::new(&core);
        assert_eq!(bits.object_type(), Some(2));
        assert_eq!(bits.rate_field(), Some((15, Some(22_050))));
        assert_eq!(bits.take(4), Some(1));
    }
}
