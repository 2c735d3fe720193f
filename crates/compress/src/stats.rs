//! A convolution's input statistics, from which its output error under any change of weights follows
//! exactly, without running the layer again.
//!
//! A convolution is y = W·x + b per output position, with x the position's receptive-field patch
//! (C·kh·kw values, zeros where the padding is; the same order as the kernel's unfolding). For a changed
//! kernel W′, ‖y − y′‖² summed over all positions and frames is tr(ΔW Σ ΔWᵀ) with Σ = Σ_patches x·xᵀ, and
//! ‖y‖² is tr(W Σ Wᵀ) + 2·bᵀ·W·s + n·‖b‖² with s = Σ x and n the number of patches. So Σ, s and n, gathered
//! once from the captured inputs (or from random tensors of the same shape), give every candidate's relative
//! output error ‖y − y′‖ / ‖y‖.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rand::SeedableRng as _;
use rand_distr::Distribution as _;

use crate::graph::Conv;

/// Σ x·xᵀ, Σ x and the count over a layer's input patches.
#[derive(Clone, Debug)]
pub struct PatchStats {
    pub sigma: Mat<f64>,
    pub sum: Vec<f64>,
    pub count: f64,
}

/// (1 − λ)·S + λ·(tr S / n)·I.
fn shrink(mut s: Mat<f64>, lambda: f64) -> Mat<f64> {
    let lambda = lambda.clamp(0.0, 1.0);
    if lambda == 0.0 {
        return s;
    }
    let n = s.nrows();
    let mean = (0..n).map(|i| s[(i, i)]).sum::<f64>() / n.max(1) as f64;
    for j in 0..n {
        for i in 0..n {
            s[(i, j)] *= 1.0 - lambda;
        }
        s[(j, j)] += lambda * mean;
    }
    s
}

/// At most this many f64 values in one im2col block (32 MiB).
const BLOCK_VALUES: usize = 1 << 22;

impl PatchStats {
    /// Empty statistics for patches of `d` values.
    pub fn new(d: usize) -> Self {
        Self {
            sigma: Mat::zeros(d, d),
            sum: vec![0.0; d],
            count: 0.0,
        }
    }

    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Add every patch of one input image (C×H×W, row-major) of `conv`.
    pub fn add_image(&mut self, conv: &Conv, input: &[f32], h: usize, w: usize) {
        let (c, kh, kw) = (conv.in_channels(), conv.kernel[2], conv.kernel[3]);
        let taps = kh * kw;
        let d = c * taps;
        debug_assert_eq!(d, self.dim());
        debug_assert_eq!(input.len(), c * h * w);
        let p = conv.pads_for(h, w);
        let (ho, wo) = conv.output_size(h, w);
        let positions = ho * wo;
        let block = (BLOCK_VALUES / d).clamp(1, positions.max(1));
        // One image's products in float32 (twice the speed of float64), added to the float64 sums once.
        let mut x = Mat::<f32>::zeros(d, block);
        let mut prod = Mat::<f32>::zeros(d, d);
        let mut start = 0;
        while start < positions {
            let n = block.min(positions - start);
            for j in 0..n {
                let pos = start + j;
                let (oy, ox) = (pos / wo, pos % wo);
                let col = x.col_as_slice_mut(j);
                for ch in 0..c {
                    for i in 0..kh {
                        let y = (oy * conv.strides[0] + i * conv.dilations[0]) as isize - p[0] as isize;
                        for jj in 0..kw {
                            let xx = (ox * conv.strides[1] + jj * conv.dilations[1]) as isize - p[1] as isize;
                            let v = if y >= 0 && (y as usize) < h && xx >= 0 && (xx as usize) < w {
                                input[(ch * h + y as usize) * w + xx as usize]
                            } else {
                                0.0
                            };
                            col[ch * taps + i * kw + jj] = v;
                        }
                    }
                }
                for (s, v) in self.sum.iter_mut().zip(col.iter()) {
                    *s += f64::from(*v);
                }
            }
            let xs = x.subcols(0, n);
            let accum = if start == 0 { Accum::Replace } else { Accum::Add };
            matmul(prod.as_mut(), accum, xs, xs.transpose(), 1.0, Par::rayon(0));
            self.count += n as f64;
            start += n;
        }
        if positions > 0 {
            for j in 0..d {
                for i in 0..d {
                    self.sigma[(i, j)] += f64::from(prod[(i, j)]);
                }
            }
        }
    }

    /// The talk's probe: `samples` tensors of the layer's input shape with independent N(0, 1) values.
    pub fn random(conv: &Conv, h: usize, w: usize, samples: usize, seed: u64) -> Self {
        let c = conv.in_channels();
        let mut s = Self::new(c * conv.taps());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::StandardNormal;
        let mut buf = vec![0f32; c * h * w];
        for _ in 0..samples {
            for v in &mut buf {
                *v = normal.sample(&mut rng);
            }
            s.add_image(conv, &buf, h, w);
        }
        s
    }

    /// The mean patch μ = s / n.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1.0);
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Σ − n·μμᵀ: the scatter about the mean (what is left once a bias absorbs the mean).
    pub fn centered(&self) -> Mat<f64> {
        let mu = self.mean();
        let n = self.count;
        Mat::from_fn(self.dim(), self.dim(), |i, j| self.sigma[(i, j)] - n * mu[i] * mu[j])
    }

    /// Σ_c[c, c′] = (1/T) Σ_t S[(c,t), (c′,t)] of the centred scatter S: the input-channel covariance,
    /// averaged over the taps, shrunk towards a multiple of the identity by `shrinkage` ∈ [0, 1]:
    /// (1 − λ)·Σ_c + λ·(tr Σ_c / C)·I. A finite calibration set estimates the directions it rarely excites
    /// poorly; shrinkage keeps some weight on them (λ = 1 is the plain, data-blind HOSVD input factor).
    pub fn channel_covariance(&self, c: usize, taps: usize, shrinkage: f64) -> Mat<f64> {
        let s = self.centered();
        let cov = Mat::from_fn(c, c, |a, b| {
            (0..taps).map(|t| s[(a * taps + t, b * taps + t)]).sum::<f64>() / taps as f64
        });
        shrink(cov, shrinkage)
    }

    /// W S Wᵀ for a K × D weight and the centred scatter S (shrunk as in [`Self::channel_covariance`]): the
    /// covariance of the layer's outputs about their mean.
    pub fn output_covariance(&self, w: MatRef<'_, f64>, shrinkage: f64) -> Mat<f64> {
        let ws = w * shrink(self.centered(), shrinkage);
        ws * w.transpose()
    }

    /// The bias change that keeps the mean output when `w` becomes `w2`: (W − W′)·μ.
    pub fn bias_shift(&self, w: MatRef<'_, f64>, w2: MatRef<'_, f64>) -> Vec<f64> {
        let mu = self.mean();
        (0..w.nrows())
            .map(|k| (0..w.ncols()).map(|j| (w[(k, j)] - w2[(k, j)]) * mu[j]).sum())
            .collect()
    }

    /// tr(A Σ Aᵀ) for a K × D matrix A.
    fn quad(&self, a: MatRef<'_, f64>) -> f64 {
        let asg = a * &self.sigma;
        let mut t = 0.0;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                t += asg[(i, j)] * a[(i, j)];
            }
        }
        t
    }

    /// ‖y‖² of the layer with weight `w` (K × D) and `bias` over all patches.
    pub fn output_energy(&self, w: MatRef<'_, f64>, bias: &[f64]) -> f64 {
        let mut e = self.quad(w);
        if !bias.is_empty() {
            for (k, &b) in bias.iter().enumerate() {
                let ws: f64 = (0..w.ncols()).map(|j| w[(k, j)] * self.sum[j]).sum();
                e += 2.0 * b * ws + self.count * b * b;
            }
        }
        e
    }

    /// ‖y − y′‖ / ‖y‖ for weights `w` → `w2` and the bias changed by `shift` (none: the same bias);
    /// `energy` is [`Self::output_energy`] of `w`. With δ = y − y′ = ΔW·x − c per patch,
    /// Σ‖δ‖² = tr(ΔW Σ ΔWᵀ) − 2·cᵀ·ΔW·s + n·‖c‖².
    pub fn relative_error(&self, w: MatRef<'_, f64>, w2: MatRef<'_, f64>, energy: f64, shift: Option<&[f64]>) -> f64 {
        if energy <= 0.0 {
            return 0.0;
        }
        let dw = w - w2;
        let mut e = self.quad(dw.as_ref());
        if let Some(c) = shift {
            for (k, &ck) in c.iter().enumerate() {
                let ds: f64 = (0..dw.ncols()).map(|j| dw[(k, j)] * self.sum[j]).sum();
                e += -2.0 * ck * ds + self.count * ck * ck;
            }
        }
        (e.max(0.0) / energy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(k: usize, c: usize, kh: usize, kw: usize, stride: usize, pad: usize, dil: usize) -> Conv {
        Conv {
            name: "c".into(),
            input: "x".into(),
            output: "y".into(),
            weight: "w".into(),
            bias: None,
            kernel: [k, c, kh, kw],
            strides: [stride, stride],
            pads: [pad, pad, pad, pad],
            dilations: [dil, dil],
            auto_pad: "NOTSET".into(),
        }
    }

    /// Direct convolution, for checking the statistics.
    fn direct(cv: &Conv, w: &[f64], b: &[f64], x: &[f32], h: usize, wd: usize) -> Vec<f64> {
        let [k, c, kh, kw] = cv.kernel;
        let (ho, wo) = cv.output_size(h, wd);
        let p = cv.pads_for(h, wd);
        let mut y = vec![0.0; k * ho * wo];
        for o in 0..k {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = b.get(o).copied().unwrap_or(0.0);
                    for ch in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * cv.strides[0] + i * cv.dilations[0]) as isize - p[0] as isize;
                                let ix = (ox * cv.strides[1] + j * cv.dilations[1]) as isize - p[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    s += w[((o * c + ch) * kh + i) * kw + j]
                                        * f64::from(x[(ch * h + iy as usize) * wd + ix as usize]);
                                }
                            }
                        }
                    }
                    y[(o * ho + oy) * wo + ox] = s;
                }
            }
        }
        y
    }

    #[test]
    fn statistics_give_the_direct_convolutions_error() {
        use rand::Rng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (cv, h, w) in [
            (conv(4, 3, 3, 3, 1, 1, 1), 7, 6),
            (conv(5, 2, 3, 3, 2, 0, 1), 9, 8),
            (conv(3, 4, 3, 3, 1, 2, 2), 6, 7),
            (conv(6, 3, 1, 1, 1, 0, 1), 5, 5),
        ] {
            let d = cv.in_channels() * cv.taps();
            let k = cv.out_channels();
            let wt: Vec<f64> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w2: Vec<f64> = wt.iter().map(|v| v + rng.random_range(-0.1..0.1)).collect();
            let b: Vec<f64> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut st = PatchStats::new(d);
            let mut num = 0.0;
            let mut den = 0.0;
            let mut xs = Vec::new();
            for _ in 0..2 {
                let x: Vec<f32> = (0..cv.in_channels() * h * w)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                st.add_image(&cv, &x, h, w);
                xs.push(x.clone());
                let (y, y2) = (direct(&cv, &wt, &b, &x, h, w), direct(&cv, &w2, &b, &x, h, w));
                num += y.iter().zip(&y2).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
                den += y.iter().map(|a| a * a).sum::<f64>();
            }
            let wm = Mat::from_fn(k, d, |i, j| wt[i * d + j]);
            let wm2 = Mat::from_fn(k, d, |i, j| w2[i * d + j]);
            let energy = st.output_energy(wm.as_ref(), &b);
            // The products are summed in float32 within an image: agreement to float32's precision.
            assert!((energy - den).abs() < 1e-5 * den, "{energy} vs {den}");
            let e = st.relative_error(wm.as_ref(), wm2.as_ref(), energy, None);
            let want = (num / den).sqrt();
            assert!((e - want).abs() < 1e-5 * want, "{cv:?}: {e} vs {want}");
            // With the second bias moved by c, the error follows too.
            let c: Vec<f64> = (0..k).map(|_| rng.random_range(-0.1..0.1)).collect();
            let b2: Vec<f64> = b.iter().zip(&c).map(|(x, y)| x + y).collect();
            let mut num2 = 0.0;
            for x in &xs {
                let (y, y2) = (direct(&cv, &wt, &b, x, h, w), direct(&cv, &w2, &b2, x, h, w));
                num2 += y.iter().zip(&y2).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
            }
            let e2 = st.relative_error(wm.as_ref(), wm2.as_ref(), energy, Some(&c));
            let want2 = (num2 / den).sqrt();
            assert!((e2 - want2).abs() < 1e-5 * want2, "{cv:?}: shifted {e2} vs {want2}");
        }
    }
}
