//! Removing encoder delay and padding, so the output starts and ends where the recording does.
//! Shared by both decoding paths: the symphonia pipeline trims its one stream, the Opus path each
//! chained Ogg link on its own (a file that is not chained is one link).

use super::Sink;
use crate::error::Result;

/// How far a stream may run past its declared end and still be cut there: 200 ms, more than any
/// codec's padding (one Opus packet is at most 120 ms, an AAC frame 2048 samples).
pub(super) fn end_tolerance(rate: u32) -> u64 {
    u64::from(rate) / 5
}

/// Drops encoder delay at the start and padding at the end of a stream of samples.
///
/// The end is known only from the container; a container that claims less than the stream holds
/// by more than `tolerance` is lying (or was cut and re-muxed), and then nothing is cut.
pub(super) struct Trimmer {
    skip: u64,
    keep: Option<u64>,
    tolerance: u64,
    emitted: u64,
    held: Vec<f32>,
}

impl Trimmer {
    pub(super) fn new(skip: u64, keep: Option<u64>, tolerance: u64) -> Trimmer {
        Trimmer {
            skip,
            keep,
            tolerance,
            emitted: 0,
            held: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, mut block: &[f32], sink: &mut Sink<'_>) -> Result<()> {
        let skip = (self.skip as usize).min(block.len());
        self.skip -= skip as u64;
        block = &block[skip..];
        let Some(keep) = self.keep else {
            self.emitted += block.len() as u64;
            return sink(block);
        };
        let room = keep.saturating_sub(self.emitted) as usize;
        let (now, beyond) = block.split_at(room.min(block.len()));
        if !now.is_empty() {
            self.emitted += now.len() as u64;
            sink(now)?;
        }
        self.held.extend_from_slice(beyond);
        if self.held.len() as u64 > self.tolerance {
            // The declared end was wrong: keep everything.
            self.keep = None;
            let held = std::mem::take(&mut self.held);
            self.emitted += held.len() as u64;
            sink(&held)?;
        }
        Ok(())
    }

    /// Frames emitted in total.
    pub(super) fn emitted(&self) -> u64 {
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(trimmer: &mut Trimmer, blocks: &[&[f32]]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in blocks {
            trimmer
                .push(b, &mut |s| {
                    out.extend_from_slice(s);
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn trimmer_drops_delay_and_padding() {
        let mut t = Trimmer::new(2, Some(4), 10);
        let out = collect(&mut t, &[&[0., 0., 1., 2.], &[3., 4., 5., 6.]]);
        assert_eq!(out, vec![1., 2., 3., 4.]);
        assert_eq!(t.emitted(), 4);
    }

    #[test]
    fn trimmer_ignores_an_end_that_lies() {
        let mut t = Trimmer::new(0, Some(2), 3);
        let out = collect(&mut t, &[&[1., 2., 3., 4., 5., 6.], &[7.]]);
        assert_eq!(out, vec![1., 2., 3., 4., 5., 6., 7.]);
    }
}
