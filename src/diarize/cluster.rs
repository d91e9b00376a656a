//! Two-speaker clustering of window features: standardisation, weighted k-means (k = 2) started
//! from a split along the principal axis, and a BIC test of one speaker against two.

/// Points with a weight (how many voiced frames stand behind each).
#[derive(Debug, Clone, Default)]
pub struct Points {
    pub dim: usize,
    pub data: Vec<f32>,
    pub weight: Vec<f32>,
}

impl Points {
    pub fn new(dim: usize) -> Self {
        Points {
            dim,
            ..Default::default()
        }
    }

    pub fn push(&mut self, x: &[f32], w: f32) {
        assert_eq!(x.len(), self.dim);
        self.data.extend_from_slice(x);
        self.weight.push(w);
    }

    pub fn len(&self) -> usize {
        self.weight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }

    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Per-dimension mean and scale (standard deviation divided by a dimension weight).
#[derive(Debug, Clone)]
pub struct Standardiser {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Standardiser {
    /// Fits z-scores on `points`; `dim_weight[d]` multiplies dimension d after scaling.
    pub fn fit(points: &Points, dim_weight: &[f32]) -> Self {
        let d = points.dim;
        let wsum: f64 = points
            .weight
            .iter()
            .map(|&w| f64::from(w))
            .sum::<f64>()
            .max(1e-9);
        let mut mean = vec![0f64; d];
        for i in 0..points.len() {
            let w = f64::from(points.weight[i]);
            for (m, &x) in mean.iter_mut().zip(points.get(i)) {
                *m += w * f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= wsum);
        let mut var = vec![0f64; d];
        for i in 0..points.len() {
            let w = f64::from(points.weight[i]);
            for ((v, &x), m) in var.iter_mut().zip(points.get(i)).zip(&mean) {
                *v += w * (f64::from(x) - m).powi(2);
            }
        }
        Standardiser {
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale: var
                .iter()
                .zip(dim_weight)
                .map(|(&v, &w)| ((v / wsum).sqrt().max(1e-6) as f32) / w)
                .collect(),
        }
    }

    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        for (((o, &v), m), s) in out.iter_mut().zip(x).zip(&self.mean).zip(&self.scale) {
            *o = (v - m) / s;
        }
    }

    pub fn apply_all(&self, points: &Points) -> Points {
        let mut out = Points::new(points.dim);
        let mut z = vec![0f32; points.dim];
        for i in 0..points.len() {
            self.apply(points.get(i), &mut z);
            out.push(&z, points.weight[i]);
        }
        out
    }
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Result of two-means clustering.
#[derive(Debug, Clone)]
pub struct TwoMeans {
    pub centroids: [Vec<f32>; 2],
    pub labels: Vec<u8>,
    /// Share of the total weight in each cluster.
    pub share: [f32; 2],
}

impl TwoMeans {
    /// Nearest centroid and a margin in 0..=1 ((d_far - d_near) / (d_far + d_near)).
    pub fn classify(&self, z: &[f32]) -> (u8, f32) {
        let d0 = dist2(z, &self.centroids[0]).sqrt();
        let d1 = dist2(z, &self.centroids[1]).sqrt();
        let (label, near, far) = if d0 <= d1 { (0, d0, d1) } else { (1, d1, d0) };
        (
            label,
            if far > 0.0 {
                (far - near) / (far + near)
            } else {
                0.0
            },
        )
    }
}

/// Weighted k-means with k = 2, deterministic: initial split by the sign of the projection on
/// the principal axis (power iteration on the weighted covariance), then Lloyd iterations.
pub fn two_means(points: &Points) -> Option<TwoMeans> {
    let n = points.len();
    let d = points.dim;
    if n < 2 {
        return None;
    }
    let wsum: f32 = points.weight.iter().sum();
    let mut mean = vec![0f32; d];
    for i in 0..n {
        for (m, &x) in mean.iter_mut().zip(points.get(i)) {
            *m += points.weight[i] * x / wsum;
        }
    }
    // principal axis
    let mut cov = vec![0f32; d * d];
    for i in 0..n {
        let x = points.get(i);
        let w = points.weight[i] / wsum;
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += w * (x[a] - mean[a]) * (x[b] - mean[b]);
            }
        }
    }
    let mut axis: Vec<f32> = (0..d).map(|k| 1.0 + 0.01 * k as f32).collect();
    for _ in 0..100 {
        let mut next = vec![0f32; d];
        for a in 0..d {
            next[a] = (0..d).map(|b| cov[a * d + b] * axis[b]).sum();
        }
        let norm = next.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm <= 1e-12 {
            return None; // all points equal
        }
        axis = next.into_iter().map(|v| v / norm).collect();
    }
    let mut labels: Vec<u8> = (0..n)
        .map(|i| {
            let p: f32 = points
                .get(i)
                .iter()
                .zip(&mean)
                .zip(&axis)
                .map(|((x, m), a)| (x - m) * a)
                .sum();
            u8::from(p > 0.0)
        })
        .collect();
    let mut centroids = [vec![0f32; d], vec![0f32; d]];
    for _ in 0..100 {
        let mut sums = [vec![0f32; d], vec![0f32; d]];
        let mut w = [0f32; 2];
        for (i, &l) in labels.iter().enumerate() {
            let k = l as usize;
            w[k] += points.weight[i];
            for (s, &x) in sums[k].iter_mut().zip(points.get(i)) {
                *s += points.weight[i] * x;
            }
        }
        if w[0] <= 0.0 || w[1] <= 0.0 {
            return None;
        }
        for k in 0..2 {
            centroids[k] = sums[k].iter().map(|s| s / w[k]).collect();
        }
        let mut changed = false;
        for (i, l) in labels.iter_mut().enumerate() {
            let x = points.get(i);
            let new = u8::from(dist2(x, &centroids[1]) < dist2(x, &centroids[0]));
            changed |= new != *l;
            *l = new;
        }
        if !changed {
            break;
        }
    }
    let mut share = [0f32; 2];
    for (i, &l) in labels.iter().enumerate() {
        share[l as usize] += points.weight[i] / wsum;
    }
    Some(TwoMeans {
        centroids,
        labels,
        share,
    })
}

/// Bayesian information criterion of two diagonal Gaussians (the k-means partition) against one,
/// per point: > 0 favours two speakers. `lambda` scales the penalty (1 = textbook BIC).
/// Uses every `stride`-th point so that overlapping windows are not counted as independent.
pub fn delta_bic(points: &Points, labels: &[u8], stride: usize, lambda: f64) -> f64 {
    let d = points.dim;
    let idx: Vec<usize> = (0..points.len()).step_by(stride.max(1)).collect();
    let n = idx.len() as f64;
    if idx.len() < 4 {
        return f64::NEG_INFINITY;
    }
    let log_det = |set: &[usize]| -> Option<f64> {
        let m = set.len() as f64;
        if set.len() < 2 {
            return None;
        }
        let mut total = 0.0;
        for k in 0..d {
            let mean = set
                .iter()
                .map(|&i| f64::from(points.get(i)[k]))
                .sum::<f64>()
                / m;
            let var = set
                .iter()
                .map(|&i| (f64::from(points.get(i)[k]) - mean).powi(2))
                .sum::<f64>()
                / m;
            total += var.max(1e-6).ln();
        }
        Some(total)
    };
    let all = log_det(&idx).unwrap_or(0.0);
    let parts: [Vec<usize>; 2] = [
        idx.iter().copied().filter(|&i| labels[i] == 0).collect(),
        idx.iter().copied().filter(|&i| labels[i] == 1).collect(),
    ];
    let mut l2 = 0.0;
    for p in &parts {
        let Some(ld) = log_det(p) else {
            return f64::NEG_INFINITY;
        };
        let m = p.len() as f64;
        l2 += -0.5 * m * ld + m * (m / n).ln();
    }
    let l1 = -0.5 * n * all;
    let penalty = lambda * 0.5 * (2 * d + 1) as f64 * n.ln();
    (l2 - l1 - penalty) / n
}

/// Fisher's linear discriminant of two labelled classes: w = (Sw + ridge I)^-1 (m1 - m0), unit
/// length, with Sw the pooled within-class covariance (weighted). `None` if a class is empty.
pub fn lda_direction(points: &Points, labels: &[u8], ridge: f64) -> Option<Vec<f32>> {
    let d = points.dim;
    let mut mean = [vec![0f64; d], vec![0f64; d]];
    let mut w = [0f64; 2];
    for (i, &l) in labels.iter().enumerate().take(points.len()) {
        let k = l as usize;
        let wi = f64::from(points.weight[i]);
        w[k] += wi;
        for (m, &x) in mean[k].iter_mut().zip(points.get(i)) {
            *m += wi * f64::from(x);
        }
    }
    if w[0] <= 0.0 || w[1] <= 0.0 {
        return None;
    }
    for k in 0..2 {
        mean[k].iter_mut().for_each(|m| *m /= w[k]);
    }
    let mut sw = vec![0f64; d * d];
    for (i, &l) in labels.iter().enumerate().take(points.len()) {
        let k = l as usize;
        let wi = f64::from(points.weight[i]) / (w[0] + w[1]);
        let x = points.get(i);
        for a in 0..d {
            let xa = f64::from(x[a]) - mean[k][a];
            for b in 0..d {
                sw[a * d + b] += wi * xa * (f64::from(x[b]) - mean[k][b]);
            }
        }
    }
    for a in 0..d {
        sw[a * d + a] += ridge;
    }
    let mut rhs: Vec<f64> = (0..d).map(|a| mean[1][a] - mean[0][a]).collect();
    // Gauss-Jordan with partial pivoting
    for c in 0..d {
        let piv = (c..d).max_by(|&i, &j| sw[i * d + c].abs().total_cmp(&sw[j * d + c].abs()))?;
        if sw[piv * d + c].abs() < 1e-12 {
            return None;
        }
        if piv != c {
            for k in 0..d {
                sw.swap(c * d + k, piv * d + k);
            }
            rhs.swap(c, piv);
        }
        for r in 0..d {
            if r != c {
                let f = sw[r * d + c] / sw[c * d + c];
                if f != 0.0 {
                    for k in 0..d {
                        sw[r * d + k] -= f * sw[c * d + k];
                    }
                    rhs[r] -= f * rhs[c];
                }
            }
        }
    }
    let dir: Vec<f64> = (0..d).map(|a| rhs[a] / sw[a * d + a]).collect();
    let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
    (norm > 0.0).then(|| dir.iter().map(|v| (v / norm) as f32).collect())
}

pub fn project(x: &[f32], dir: &[f32]) -> f32 {
    x.iter().zip(dir).map(|(a, b)| a * b).sum()
}

/// Two 1-D Gaussians (one per speaker) on a discriminant projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauss2 {
    pub mean: [f64; 2],
    pub var: [f64; 2],
    pub prior: [f64; 2],
}

impl Gauss2 {
    /// Fits each class's mean and variance (weighted); `None` if a class is empty.
    pub fn fit(values: &[f32], weights: &[f32], labels: &[u8]) -> Option<Self> {
        let mut w = [0f64; 2];
        let mut s = [0f64; 2];
        for ((&v, &wi), &l) in values.iter().zip(weights).zip(labels) {
            w[l as usize] += f64::from(wi);
            s[l as usize] += f64::from(wi) * f64::from(v);
        }
        if w[0] <= 0.0 || w[1] <= 0.0 {
            return None;
        }
        let mean = [s[0] / w[0], s[1] / w[1]];
        let mut q = [0f64; 2];
        for ((&v, &wi), &l) in values.iter().zip(weights).zip(labels) {
            q[l as usize] += f64::from(wi) * (f64::from(v) - mean[l as usize]).powi(2);
        }
        let floor = 1e-3 * (mean[1] - mean[0]).powi(2).max(1e-6);
        Some(Gauss2 {
            mean,
            var: [(q[0] / w[0]).max(floor), (q[1] / w[1]).max(floor)],
            prior: [w[0] / (w[0] + w[1]), w[1] / (w[0] + w[1])],
        })
    }

    /// The likelier class and its posterior probability (0.5..=1).
    pub fn classify(&self, v: f32) -> (u8, f32) {
        let ll = |k: usize| {
            -0.5 * (f64::from(v) - self.mean[k]).powi(2) / self.var[k] - 0.5 * self.var[k].ln()
                + self.prior[k].max(1e-3).ln()
        };
        let (a, b) = (ll(0), ll(1));
        let p1 = 1.0 / (1.0 + (a - b).exp());
        if p1 > 0.5 {
            (1, p1 as f32)
        } else {
            (0, (1.0 - p1) as f32)
        }
    }

    /// Distance of the means in pooled standard deviations (d').
    pub fn separation(&self) -> f64 {
        (self.mean[1] - self.mean[0]).abs() / (0.5 * (self.var[0] + self.var[1])).sqrt()
    }
}

/// 1-D BIC per point of the two-Gaussian split `labels` against one Gaussian, using every
/// `stride`-th value (> 0 favours two speakers).
pub fn delta_bic_1d(values: &[f32], labels: &[u8], stride: usize, lambda: f64) -> f64 {
    let idx: Vec<usize> = (0..values.len()).step_by(stride.max(1)).collect();
    let n = idx.len() as f64;
    if idx.len() < 4 {
        return f64::NEG_INFINITY;
    }
    let var = |set: &[usize]| -> f64 {
        let m = set.len() as f64;
        let mean = set.iter().map(|&i| f64::from(values[i])).sum::<f64>() / m;
        (set.iter()
            .map(|&i| (f64::from(values[i]) - mean).powi(2))
            .sum::<f64>()
            / m)
            .max(1e-9)
    };
    let mut l2 = 0.0;
    for k in 0..2u8 {
        let part: Vec<usize> = idx.iter().copied().filter(|&i| labels[i] == k).collect();
        if part.len() < 2 {
            return f64::NEG_INFINITY;
        }
        let m = part.len() as f64;
        l2 += -0.5 * m * var(&part).ln() + m * (m / n).ln();
    }
    let l1 = -0.5 * n * var(&idx).ln();
    (l2 - l1 - lambda * 1.5 * n.ln()) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(rng: &mut fastrand::Rng) -> f32 {
        // Box-Muller
        let (u, v) = (rng.f32().max(1e-9), rng.f32());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }

    #[test]
    fn separable_clusters_are_found() {
        let mut rng = fastrand::Rng::with_seed(4);
        let mut pts = Points::new(3);
        let mut truth = Vec::new();
        for i in 0..300 {
            let k = usize::from(i % 3 == 0); // one third in cluster 1
            let c = [k as f32 * 6.0, 0.0, -(k as f32) * 3.0];
            let x: Vec<f32> = c.iter().map(|c| c + gaussian(&mut rng)).collect();
            pts.push(&x, 1.0 + (i % 5) as f32);
            truth.push(k as u8);
        }
        let z = Standardiser::fit(&pts, &[1.0; 3]).apply_all(&pts);
        let km = two_means(&z).unwrap();
        let agree = km.labels.iter().zip(&truth).filter(|(a, b)| a == b).count();
        let acc = agree.max(300 - agree) as f32 / 300.0;
        assert!(acc > 0.97, "accuracy {acc}");
        assert!(delta_bic(&z, &km.labels, 1, 1.0) > 0.0);
    }

    #[test]
    fn lda_finds_the_discriminant_not_the_largest_variance() {
        // Classes differ along dim 1 by 1.5 sd; dim 0 has 5x the variance and no information.
        let mut rng = fastrand::Rng::with_seed(6);
        let mut pts = Points::new(2);
        let mut labels = Vec::new();
        for i in 0..400 {
            let k = (i % 2) as u8;
            pts.push(
                &[
                    5.0 * gaussian(&mut rng),
                    1.5 * f32::from(k) + gaussian(&mut rng),
                ],
                1.0,
            );
            labels.push(k);
        }
        let w = lda_direction(&pts, &labels, 1e-6).unwrap();
        assert!(w[1].abs() > 0.95, "{w:?}");
        let proj: Vec<f32> = (0..pts.len()).map(|i| project(pts.get(i), &w)).collect();
        let g = Gauss2::fit(&proj, &pts.weight, &labels).unwrap();
        assert!((g.separation() - 1.5).abs() < 0.3, "{g:?}");
        let ok = (0..pts.len())
            .filter(|&i| g.classify(proj[i]).0 == labels[i])
            .count();
        assert!(ok > 400 * 70 / 100, "{ok}");
    }

    #[test]
    fn one_gaussian_is_one_speaker() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut pts = Points::new(4);
        for _ in 0..400 {
            let x: Vec<f32> = (0..4).map(|_| gaussian(&mut rng)).collect();
            pts.push(&x, 1.0);
        }
        let z = Standardiser::fit(&pts, &[1.0; 4]).apply_all(&pts);
        let km = two_means(&z).unwrap();
        assert!(delta_bic(&z, &km.labels, 1, 1.0) < 0.0);
        let proj: Vec<f32> = (0..z.len()).map(|i| z.get(i)[0]).collect();
        let split: Vec<u8> = proj.iter().map(|&v| u8::from(v > 0.0)).collect();
        assert!(delta_bic_1d(&proj, &split, 1, 1.0) < 0.0);
    }
}
