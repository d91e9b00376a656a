//! The GE2E network of resemblyzer 0.1.4: a 3-layer LSTM (hidden 256, PyTorch gate order i, f,
//! g, o) over 160 mel frames, the last layer's final hidden state through linear 256→256, ReLU,
//! L2 normalisation.
//!
//! A batch of partials runs through the LSTM together, time-major: for each layer, the input
//! projection of every frame of every partial is one GEMM (`[T·B × in] · W_ihᵀ`), then each time
//! step adds `H · W_hhᵀ` (`[B × 256] · [256 × 1024]`) and applies the gates.

use std::path::Path;

use safetensors::SafeTensors;

use crate::error::{Error, ErrorCode, Result};

/// LSTM hidden size and embedding size.
pub const HIDDEN: usize = 256;
const GATES: usize = 4 * HIDDEN;
const LAYERS: usize = 3;
/// Mel frames of one partial (1.6 s).
pub const PARTIAL_FRAMES: usize = 160;

struct Layer {
    input: usize,
    /// `[1024 × input]`, row-major as PyTorch stores it.
    w_ih: Vec<f32>,
    /// `[1024 × 256]`.
    w_hh: Vec<f32>,
    /// `b_ih + b_hh`.
    bias: Vec<f32>,
}

/// The loaded weights.
pub struct Ge2eNet {
    layers: Vec<Layer>,
    /// `[256 × 256]`.
    linear_w: Vec<f32>,
    linear_b: Vec<f32>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::ConfigMissing,
        format!(
            "speaker model {}: {what} (run SPEAKER_MODEL=ge2e scripts/fetch-speaker-model.sh and \
             set SPEAKER_MODEL_PATH)",
            path.display()
        ),
    )
}

impl Ge2eNet {
    /// Reads the safetensors file written by scripts/convert_ge2e.py.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| invalid(path, format!("cannot read it: {e}")))?;
        Self::from_bytes(&bytes).map_err(|what| invalid(path, what))
    }

    fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let get = |name: &str, shape: &[usize]| super::f32_tensor(&st, name, shape);
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let input = if l == 0 { super::mel::N_MELS } else { HIDDEN };
            let w_ih = get(&format!("lstm.weight_ih_l{l}"), &[GATES, input])?;
            let w_hh = get(&format!("lstm.weight_hh_l{l}"), &[GATES, HIDDEN])?;
            let b_ih = get(&format!("lstm.bias_ih_l{l}"), &[GATES])?;
            let b_hh = get(&format!("lstm.bias_hh_l{l}"), &[GATES])?;
            let bias = b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect();
            layers.push(Layer {
                input,
                w_ih,
                w_hh,
                bias,
            });
        }
        let linear_w = get("linear.weight", &[HIDDEN, HIDDEN])?;
        let linear_b = get("linear.bias", &[HIDDEN])?;
        Ok(Self {
            layers,
            linear_w,
            linear_b,
        })
    }

    /// Embeds `b` partials. `mels` is time-major: `PARTIAL_FRAMES` blocks of `b` rows of
    /// `N_MELS`. Writes `b` rows of `HIDDEN` L2-normalised values to `out`.
    pub fn forward(&self, mels: &[f32], b: usize, scratch: &mut Scratch, out: &mut [f32]) {
        let t_steps = PARTIAL_FRAMES;
        assert_eq!(mels.len(), t_steps * b * super::mel::N_MELS);
        assert_eq!(out.len(), b * HIDDEN);
        let rows = t_steps * b;
        scratch.gates.resize(rows * GATES, 0.0);
        scratch.seq_a.resize(rows * HIDDEN, 0.0);
        scratch.seq_b.resize(rows * HIDDEN, 0.0);
        scratch.c.resize(b * HIDDEN, 0.0);
        let Scratch {
            gates,
            seq_a,
            seq_b,
            c,
        } = scratch;
        let (mut input, mut output): (&mut [f32], &mut [f32]) = (seq_a, seq_b);
        for (l, layer) in self.layers.iter().enumerate() {
            let x: &[f32] = if l == 0 { mels } else { &input[..] };
            // gates[r] = bias + x[r] · W_ihᵀ for every row r = t·b + j.
            for row in gates.chunks_exact_mut(GATES) {
                row.copy_from_slice(&layer.bias);
            }
            sgemm(
                rows,
                layer.input,
                GATES,
                x,
                layer.input,
                &layer.w_ih,
                true,
                gates,
                1.0,
            );
            c.fill(0.0);
            for t in 0..t_steps {
                let g = &mut gates[t * b * GATES..(t + 1) * b * GATES];
                if t > 0 {
                    let (done, rest) = output.split_at_mut(t * b * HIDDEN);
                    let h_prev = &done[(t - 1) * b * HIDDEN..];
                    sgemm(b, HIDDEN, GATES, h_prev, HIDDEN, &layer.w_hh, true, g, 1.0);
                    lstm_cell(g, c, &mut rest[..b * HIDDEN]);
                } else {
                    lstm_cell(g, c, &mut output[..b * HIDDEN]);
                }
            }
            std::mem::swap(&mut input, &mut output);
        }
        // The last layer's output is now in `input`; its final step is the hidden state.
        let h_last = &input[(t_steps - 1) * b * HIDDEN..t_steps * b * HIDDEN];
        for row in out.chunks_exact_mut(HIDDEN) {
            row.copy_from_slice(&self.linear_b);
        }
        sgemm(
            b,
            HIDDEN,
            HIDDEN,
            h_last,
            HIDDEN,
            &self.linear_w,
            true,
            out,
            1.0,
        );
        for row in out.chunks_exact_mut(HIDDEN) {
            for v in row.iter_mut() {
                *v = v.max(0.0);
            }
            l2_normalise(row);
        }
    }
}

/// Buffers reused between batches.
#[derive(Default)]
pub struct Scratch {
    gates: Vec<f32>,
    seq_a: Vec<f32>,
    seq_b: Vec<f32>,
    c: Vec<f32>,
}

/// Scales `v` to unit length. An all-zero vector (ReLU cut everything) becomes the uniform unit
/// vector, so callers never see NaN.
pub fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in v.iter_mut() {
            *x /= norm;
        }
    } else {
        let u = 1.0 / (v.len() as f32).sqrt();
        v.fill(u);
    }
}

/// `c = a · bᵀ + beta·c` where `a` is `[m × k]` (row stride `lda`) and `b` is stored `[n × k]`
/// row-major (`transpose_b`), `c` is `[m × n]` row-major.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    transpose_b: bool,
    c: &mut [f32],
    beta: f32,
) {
    assert!(a.len() >= (m.saturating_sub(1)) * lda + k);
    assert!(b.len() >= n * k);
    assert!(c.len() >= m * n);
    let (rsb, csb) = if transpose_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the asserts above bound every index matrixmultiply touches: a is m×k with row
    // stride lda, b is k×n viewed through (rsb, csb) over an n×k buffer, c is m×n contiguous.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// One LSTM step for a batch: `g` holds `[b × 1024]` pre-activations (i, f, g, o), `c` the cell
/// state `[b × 256]`, updated in place; `h` receives the new hidden state.
fn lstm_cell(g: &mut [f32], c: &mut [f32], h: &mut [f32]) {
    for ((gr, cr), hr) in g
        .chunks_exact_mut(GATES)
        .zip(c.chunks_exact_mut(HIDDEN))
        .zip(h.chunks_exact_mut(HIDDEN))
    {
        let (gi, rest) = gr.split_at_mut(HIDDEN);
        let (gf, rest) = rest.split_at_mut(HIDDEN);
        let (gg, go) = rest.split_at_mut(HIDDEN);
        sigmoid_in_place(gi);
        sigmoid_in_place(gf);
        tanh_in_place(gg);
        sigmoid_in_place(go);
        for j in 0..HIDDEN {
            cr[j] = gf[j] * cr[j] + gi[j] * gg[j];
        }
        hr.copy_from_slice(cr);
        tanh_in_place(hr);
        for j in 0..HIDDEN {
            hr[j] *= go[j];
        }
    }
}

/// tanh as a rational function (Eigen's `generic_fast_tanh_float`): within a few ulp of
/// `f32::tanh`, branch-free so the loops vectorise.
#[inline(always)]
fn fast_tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = p * x2 + A9;
    p = p * x2 + A7;
    p = p * x2 + A5;
    p = p * x2 + A3;
    p = p * x2 + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = q * x2 + B2;
    q = q * x2 + B0;
    p / q
}

fn tanh_in_place(v: &mut [f32]) {
    for x in v {
        *x = fast_tanh(*x);
    }
}

fn sigmoid_in_place(v: &mut [f32]) {
    for x in v {
        *x = 0.5 + 0.5 * fast_tanh(0.5 * *x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_is_close_to_std() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 1e-6, "worst {worst}");
        assert_eq!(fast_tanh(f32::INFINITY), fast_tanh(100.0));
        assert!((fast_tanh(-1e6) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn sgemm_transposed_b() {
        // a = [[1,2],[3,4]], b stored [n×k] = [[1,0],[0,1],[1,1]] -> a·bᵀ = [[1,2,3],[3,4,7]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [1.0; 6];
        sgemm(2, 2, 3, &a, 2, &b, true, &mut c, 1.0);
        assert_eq!(c, [2.0, 3.0, 4.0, 4.0, 5.0, 8.0]);
    }

    #[test]
    fn zero_vector_normalises_to_uniform() {
        let mut v = vec![0.0; 4];
        l2_normalise(&mut v);
        assert_eq!(v, vec![0.5; 4]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Ge2eNet::from_bytes(b"").is_err());
        assert!(Ge2eNet::from_bytes(&[0xff; 64]).is_err());
        let mut header =
            br#"{"linear.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.append(&mut header);
        file.extend_from_slice(&[0; 8]);
        let err = Ge2eNet::from_bytes(&file).err().unwrap();
        assert!(err.contains("has no tensor lstm.weight_ih_l0"), "{err}");
    }
}
