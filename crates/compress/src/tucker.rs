//! Tucker-2 decomposition of a convolution kernel, pure maths on `faer` matrices.
//!
//! A kernel W of shape K×C×kh×kw (T = kh·kw taps) is held as its mode-1 unfolding, a K × C·T matrix whose
//! column `c·T + t` is ONNX's row-major order. Tucker-2 approximates it as
//! W′[k,c,t] = Σ_o Σ_r U[k,o] · G[o,r,t] · A[r,c], which runs as three convolutions:
//! 1×1 with weight A (C → R_in), kh×kw with core G (R_in → R_out, the original stride, padding and dilation),
//! and 1×1 with weight U (R_out → K, the original bias).
//!
//! Three ways to choose the factors:
//! - [`Factors::hosvd`]: U and Aᵀ are the leading left singular vectors of the two channel-mode unfoldings,
//!   G = W ×₁ Uᵀ ×₂ Aᵀᵀ (optionally refined by HOOI, [`Factors::hooi`]). It minimises the weight error
//!   ‖W − W′‖_F, which is also the expected output error for independent random inputs.
//! - [`Factors::data_aware`]: minimise the output error on the layer's real inputs. The input side whitens by
//!   the input-channel covariance Σ_c (S = Σ_c^½): with B the K·T × C stack of the kernel's taps, the best
//!   rank-R_in input projection for ‖B (I − P) S‖ is P = S V Vᵀ S⁻¹ with V the leading right singular vectors
//!   of B·S (ASVD/SVD-LLM's whitening; Zhang et al. 2015 for CNNs). The output side is then exact: U holds the
//!   leading eigenvectors of the covariance of the input-projected layer's outputs (W′_in Σ_p W′_inᵀ). Both
//!   use the statistics about their mean, and the bias absorbs the mean: b′ = b + (W − W′)·μ (the "bias
//!   correction" of post-training quantisation), so the mean output on the calibration frames is kept.

use faer::{Mat, MatRef, Side};
use thiserror::Error;

use crate::stats::PatchStats;

#[derive(Debug, Error)]
pub enum TuckerError {
    #[error("eigendecomposition did not converge")]
    Eigen,
    #[error("ranks ({r_in}, {r_out}) exceed the kernel's channels ({c}, {k})")]
    Ranks {
        r_in: usize,
        r_out: usize,
        c: usize,
        k: usize,
    },
}

/// A K×C×kh×kw kernel as its K × C·T unfolding.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub k: usize,
    pub c: usize,
    pub taps: usize,
    pub w: Mat<f64>,
}

impl Kernel {
    /// From ONNX's row-major float32 values.
    pub fn from_f32(k: usize, c: usize, taps: usize, values: &[f32]) -> Self {
        let d = c * taps;
        Self {
            k,
            c,
            taps,
            w: Mat::from_fn(k, d, |i, j| f64::from(values[i * d + j])),
        }
    }

    /// Relative Frobenius distance ‖self − other‖ / ‖self‖.
    pub fn relative_error(&self, other: &Mat<f64>) -> f64 {
        let n = self.w.norm_l2();
        if n == 0.0 {
            return 0.0;
        }
        (&self.w - other).norm_l2() / n
    }
}

/// Tucker-2 factors: the three convolutions' weights.
#[derive(Clone, Debug)]
pub struct Factors {
    /// R_in × C: the first 1×1 convolution.
    pub a: Mat<f64>,
    /// R_out × R_in·T: the core convolution (column `r·T + t`).
    pub core: Mat<f64>,
    /// K × R_out: the last 1×1 convolution.
    pub u: Mat<f64>,
    pub taps: usize,
    /// Added to the layer's bias so that its mean output on the captured inputs is kept, (W − W′)·μ
    /// (data-aware factors only).
    pub bias_shift: Option<Vec<f64>>,
}

/// y[k, c′·T + t] = Σ_c x[k, c·T + t] · m[c, c′]: apply `m` (Cin × Cout) to the channel mode of a
/// K × Cin·T unfolding.
pub fn apply_in(x: MatRef<'_, f64>, m: MatRef<'_, f64>, taps: usize) -> Mat<f64> {
    let (k, cin, cout) = (x.nrows(), m.nrows(), m.ncols());
    let x2 = Mat::from_fn(k * taps, cin, |row, c| x[(row / taps, c * taps + row % taps)]);
    let y2 = &x2 * m;
    Mat::from_fn(k, cout * taps, |i, j| y2[(i * taps + j % taps, j / taps)])
}

/// The channel-mode stack: B[(k·T + t), c] = W[k, c, t] (K·T × C).
fn taps_stack(w: MatRef<'_, f64>, c: usize, taps: usize) -> Mat<f64> {
    Mat::from_fn(w.nrows() * taps, c, |row, ch| w[(row / taps, ch * taps + row % taps)])
}

/// The eigenvectors of symmetric `g` for its `r` largest eigenvalues, largest first, and all eigenvalues
/// in decreasing order.
pub fn top_eigenvectors(g: MatRef<'_, f64>, r: usize) -> Result<(Mat<f64>, Vec<f64>), TuckerError> {
    let e = g.self_adjoint_eigen(Side::Lower).map_err(|_| TuckerError::Eigen)?;
    let n = g.nrows();
    let (uu, s) = (e.U(), e.S());
    let vals: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    Ok((Mat::from_fn(n, r.min(n), |i, j| uu[(i, n - 1 - j)]), vals))
}

/// Leading left singular vectors of `x` (from the Gram matrix x·xᵀ).
fn left_vectors(x: MatRef<'_, f64>, r: usize) -> Result<Mat<f64>, TuckerError> {
    let g = x * x.transpose();
    Ok(top_eigenvectors(g.as_ref(), r)?.0)
}

/// Everything about a kernel that does not depend on the ranks, so that a rank search computes it once.
pub struct Prepared {
    pub kernel: Kernel,
    /// HOSVD: all left singular vectors of the output-mode unfolding (K × K), largest first.
    u_full: Mat<f64>,
    /// HOSVD: of the input-channel unfolding (C × C).
    v_full: Mat<f64>,
    /// Data-aware, when input statistics were given: S·V (C × C) and Vᵀ·S⁻¹ (C × C), V from SVD of B·S.
    whitened: Option<(Mat<f64>, Mat<f64>)>,
    shrinkage: f64,
}

/// Which factorisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Factorisation {
    /// HOSVD, refined by this many HOOI iterations (0: plain HOSVD).
    Hosvd { hooi_iterations: usize },
    /// Whitened by the captured input statistics.
    DataAware,
}

impl Prepared {
    /// `stats`: the layer's input statistics, needed for [`Factorisation::DataAware`]; `shrinkage` ∈ [0, 1]
    /// of its covariances towards the identity ([`PatchStats::channel_covariance`]).
    pub fn new(kernel: Kernel, stats: Option<&PatchStats>, shrinkage: f64) -> Result<Self, TuckerError> {
        let (k, c, t) = (kernel.k, kernel.c, kernel.taps);
        let u_full = left_vectors(kernel.w.as_ref(), k)?;
        let b = taps_stack(kernel.w.as_ref(), c, t);
        let v_full = top_eigenvectors((b.transpose() * &b).as_ref(), c)?.0;
        let whitened = match stats {
            Some(s) => Some(whiten(&b, &s.channel_covariance(c, t, shrinkage))?),
            None => None,
        };
        Ok(Self {
            kernel,
            u_full,
            v_full,
            whitened,
            shrinkage,
        })
    }

    fn check(&self, r_in: usize, r_out: usize) -> Result<(), TuckerError> {
        let kk = &self.kernel;
        if r_in == 0 || r_out == 0 || r_in > kk.c || r_out > kk.k {
            return Err(TuckerError::Ranks {
                r_in,
                r_out,
                c: kk.c,
                k: kk.k,
            });
        }
        Ok(())
    }

    /// The factors at ranks (`r_in`, `r_out`). Data-aware without statistics falls back to HOSVD.
    pub fn factors(
        &self,
        how: Factorisation,
        r_in: usize,
        r_out: usize,
        stats: Option<&PatchStats>,
    ) -> Result<Factors, TuckerError> {
        self.check(r_in, r_out)?;
        let kk = &self.kernel;
        let t = kk.taps;
        match (how, &self.whitened, stats) {
            (Factorisation::DataAware, Some((sv, vts)), Some(stats)) => {
                let vin = sv.subcols(0, r_in);
                let a = vts.subrows(0, r_in).to_owned();
                // W_r = W ×₂ Vinᵀ (K × R_in·T); W′_in = W_r ×₂ A (K × C·T).
                let wr = apply_in(kk.w.as_ref(), vin, t);
                let w_in = apply_in(wr.as_ref(), a.as_ref(), t);
                let cov_y = stats.output_covariance(w_in.as_ref(), self.shrinkage);
                let u = top_eigenvectors(cov_y.as_ref(), r_out)?.0;
                let core = u.transpose() * &wr;
                let mut f = Factors {
                    a,
                    core,
                    u,
                    taps: t,
                    bias_shift: None,
                };
                f.bias_shift = Some(stats.bias_shift(kk.w.as_ref(), f.reconstruct().as_ref()));
                Ok(f)
            }
            _ => {
                let iters = match how {
                    Factorisation::Hosvd { hooi_iterations } => hooi_iterations,
                    Factorisation::DataAware => 0,
                };
                let mut u = self.u_full.subcols(0, r_out).to_owned();
                let mut v = self.v_full.subcols(0, r_in).to_owned();
                for _ in 0..iters {
                    // U from W ×₂ Vᵀ, then V from W ×₁ Uᵀ.
                    let y = apply_in(kk.w.as_ref(), v.as_ref(), t);
                    u = left_vectors(y.as_ref(), r_out)?;
                    let z = u.transpose() * &kk.w;
                    let zb = taps_stack(z.as_ref(), kk.c, t);
                    v = top_eigenvectors((zb.transpose() * &zb).as_ref(), r_in)?.0;
                }
                let y = apply_in(kk.w.as_ref(), v.as_ref(), t);
                let core = u.transpose() * &y;
                Ok(Factors {
                    a: v.transpose().to_owned(),
                    core,
                    u,
                    taps: t,
                    bias_shift: None,
                })
            }
        }
    }
}

/// S·V and Vᵀ·S⁻¹ for S = Σ_c^½ and V the right singular vectors of B·S (all of them, largest first).
fn whiten(b: &Mat<f64>, cov: &Mat<f64>) -> Result<(Mat<f64>, Mat<f64>), TuckerError> {
    let c = cov.nrows();
    let (e, vals) = top_eigenvectors(cov.as_ref(), c)?;
    // Channels that never vary (dead ones, constant padding) would make S singular: floor the eigenvalues
    // at a tiny fraction of the largest.
    let floor = vals.first().copied().unwrap_or(0.0).max(f64::MIN_POSITIVE) * 1e-10;
    let sq: Vec<f64> = vals.iter().map(|&l| l.max(floor).sqrt()).collect();
    let scaled = |f: &dyn Fn(f64) -> f64| Mat::from_fn(c, c, |i, m| e[(i, m)] * f(sq[m])) * e.transpose();
    let s = scaled(&|x| x);
    let s_inv = scaled(&|x| 1.0 / x);
    let bs = b * &s;
    let v = top_eigenvectors((bs.transpose() * &bs).as_ref(), c)?.0;
    Ok((&s * &v, v.transpose() * &s_inv))
}

impl Factors {
    pub fn r_in(&self) -> usize {
        self.a.nrows()
    }
    pub fn r_out(&self) -> usize {
        self.u.ncols()
    }

    /// W′ as a K × C·T unfolding.
    pub fn reconstruct(&self) -> Mat<f64> {
        let f = &self.u * &self.core;
        apply_in(f.as_ref(), self.a.as_ref(), self.taps)
    }

    /// Weights of the replacement (without the bias): C·R_in + R_in·R_out·T + R_out·K, or for a 1×1 kernel
    /// (the core merged into the last convolution) C·R + R·K.
    pub fn params(&self) -> usize {
        tucker_params(self.a.ncols(), self.u.nrows(), self.taps, self.r_in(), self.r_out())
    }
}

/// Weight parameters of a Tucker-2 replacement at ranks (r_in, r_out); a 1×1 kernel becomes two
/// convolutions of rank r_in (= r_out).
pub fn tucker_params(c: usize, k: usize, taps: usize, r_in: usize, r_out: usize) -> usize {
    if taps == 1 {
        c * r_in + r_in * k
    } else {
        c * r_in + r_in * r_out * taps + r_out * k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};

    fn random(rows: usize, cols: usize, rng: &mut rand::rngs::StdRng) -> Mat<f64> {
        Mat::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0))
    }

    /// A kernel with exact multilinear ranks (r_in, r_out) in the channel modes.
    fn low_rank(k: usize, c: usize, t: usize, r_in: usize, r_out: usize, seed: u64) -> Kernel {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let f = Factors {
            a: random(r_in, c, &mut rng),
            core: random(r_out, r_in * t, &mut rng),
            u: random(k, r_out, &mut rng),
            taps: t,
            bias_shift: None,
        };
        Kernel {
            k,
            c,
            taps: t,
            w: f.reconstruct(),
        }
    }

    #[test]
    fn exact_low_multilinear_rank_is_reconstructed() {
        let kern = low_rank(24, 16, 9, 5, 7, 1);
        let p = Prepared::new(kern.clone(), None, 0.0).unwrap();
        for how in [
            Factorisation::Hosvd { hooi_iterations: 0 },
            Factorisation::Hosvd { hooi_iterations: 3 },
        ] {
            let f = p.factors(how, 5, 7, None).unwrap();
            let e = kern.relative_error(&f.reconstruct());
            assert!(e < 1e-5, "{how:?}: {e}");
            // One rank fewer in either mode cannot be exact.
            let g = p.factors(how, 4, 7, None).unwrap();
            assert!(kern.relative_error(&g.reconstruct()) > 1e-3);
        }
    }

    #[test]
    fn full_rank_is_exact_and_error_falls_with_rank() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let kern = Kernel {
            k: 12,
            c: 10,
            taps: 9,
            w: random(12, 90, &mut rng),
        };
        let p = Prepared::new(kern.clone(), None, 0.0).unwrap();
        let h = Factorisation::Hosvd { hooi_iterations: 0 };
        assert!(kern.relative_error(&p.factors(h, 10, 12, None).unwrap().reconstruct()) < 1e-10);
        let mut last = f64::INFINITY;
        for r in 1..=10 {
            let e = kern.relative_error(&p.factors(h, r, r.min(12), None).unwrap().reconstruct());
            assert!(e <= last + 1e-12, "rank {r}: {e} > {last}");
            last = e;
        }
        // HOOI never does worse than its HOSVD start.
        let e0 = kern.relative_error(&p.factors(h, 4, 5, None).unwrap().reconstruct());
        let e3 = kern.relative_error(
            &p.factors(Factorisation::Hosvd { hooi_iterations: 5 }, 4, 5, None)
                .unwrap()
                .reconstruct(),
        );
        assert!(e3 <= e0 + 1e-12, "{e3} > {e0}");
    }

    #[test]
    fn params_count_three_convolutions_or_two_for_1x1() {
        assert_eq!(
            tucker_params(512, 1024, 9, 256, 512),
            512 * 256 + 256 * 512 * 9 + 512 * 1024
        );
        assert_eq!(tucker_params(1024, 256, 1, 64, 64), 1024 * 64 + 64 * 256);
    }

    #[test]
    fn ranks_are_checked() {
        let kern = low_rank(8, 4, 1, 2, 2, 3);
        let p = Prepared::new(kern, None, 0.0).unwrap();
        assert!(p.factors(Factorisation::DataAware, 5, 2, None).is_err());
        assert!(p.factors(Factorisation::DataAware, 0, 2, None).is_err());
    }
}
