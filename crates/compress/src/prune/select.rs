//! Which channels to remove, and the next layer's weights without them: pure maths on `faer`.
//!
//! Removing input channels of a convolution y = W·x + b (x its receptive-field patch) leaves a least-squares
//! problem over the calibration patches: the kept columns W′ and bias b′ that best reproduce y. With Σ the
//! centred patch covariance and R the kept columns, W′ = W·Σ[:,R]·Σ[R,R]⁻¹ and b′ = b + W·μ − W′·μ[R]
//! (He et al. 2017; ThiNet). The error of removing a set S of columns this way is tr(W_S·(Σ⁻¹[S,S])⁻¹·W_Sᵀ)
//! (Optimal Brain Surgeon for a block), which orders the channels greedily: remove the cheapest batch,
//! update W and Σ⁻¹ by the block formulas, score again. The L1 baseline ranks filters by ‖w‖₁ and drops the
//! columns without a refit.

use std::borrow::Cow;

use faer::linalg::solvers::DenseSolveCore as _;
use faer::{Mat, MatRef, Side};
use thiserror::Error;

use crate::stats::PatchStats;

#[derive(Debug, Error)]
pub enum SelectError {
    #[error("the input covariance is not positive definite (even with damping)")]
    NotPositiveDefinite,
}

/// One consumer convolution of a group: its weights, input statistics, and which of its patch columns
/// belong to each of the group's classes.
pub struct Consumer<'a> {
    /// K × (C·kh·kw), the unfolding of the kernel.
    pub w: Mat<f64>,
    pub bias: Vec<f64>,
    pub stats: Cow<'a, PatchStats>,
    /// Per class of the group (same order as the group's classes): its columns of `w`.
    pub columns: Vec<Vec<usize>>,
    /// ‖y‖² on the calibration patches.
    pub energy: f64,
    /// Which convolution this is, for the caller.
    pub conv: Option<usize>,
}

/// Σ (centred) + δ·mean(diag Σ)·I.
pub fn damped_covariance(stats: &PatchStats, damping: f64) -> Mat<f64> {
    let mut s = stats.centered();
    let n = s.nrows();
    let mean = (0..n).map(|i| s[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let add = damping * mean.max(f64::MIN_POSITIVE);
    for i in 0..n {
        s[(i, i)] += add;
    }
    s
}

fn inverse(m: MatRef<'_, f64>) -> Result<Mat<f64>, SelectError> {
    let llt = m.llt(Side::Lower).map_err(|_| SelectError::NotPositiveDefinite)?;
    Ok(llt.inverse())
}

fn submatrix(m: MatRef<'_, f64>, rows: &[usize], cols: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), cols.len(), |i, j| m[(rows[i], cols[j])])
}

/// tr(A·B·Aᵀ) for A = `w`[:, s] and B = `b`.
fn trace_quadratic(w: MatRef<'_, f64>, s: &[usize], b: MatRef<'_, f64>) -> f64 {
    let ws = Mat::from_fn(w.nrows(), s.len(), |i, j| w[(i, s[j])]);
    let wb = &ws * b;
    let mut t = 0.0;
    for j in 0..s.len() {
        for i in 0..w.nrows() {
            t += wb[(i, j)] * ws[(i, j)];
        }
    }
    t
}

/// The classes in the order they should go (cheapest first), by greedy block OBS over all consumers, in
/// batches of `batch` classes. Classes no consumer reads go first (their removal costs nothing here).
pub fn data_aware_order(
    consumers: &[Consumer],
    classes: usize,
    batch: usize,
    damping: f64,
) -> Result<Vec<usize>, SelectError> {
    struct State {
        w: Mat<f64>,
        hinv: Mat<f64>,
        /// Original column → current index (None once removed).
        at: Vec<Option<usize>>,
        energy: f64,
    }
    let mut states = Vec::with_capacity(consumers.len());
    for c in consumers {
        let h = damped_covariance(&c.stats, damping);
        states.push(State {
            w: c.w.clone(),
            hinv: inverse(h.as_ref())?,
            at: (0..c.w.ncols()).map(Some).collect(),
            energy: c.energy.max(f64::MIN_POSITIVE),
        });
    }
    let mut alive: Vec<usize> = (0..classes).collect();
    let mut order = Vec::with_capacity(classes);
    let batch = batch.max(1);
    while !alive.is_empty() {
        let mut scored: Vec<(f64, usize)> = Vec::with_capacity(alive.len());
        for &cl in &alive {
            let mut score = 0.0;
            for (c, st) in consumers.iter().zip(&states) {
                let s: Vec<usize> = c.columns[cl].iter().filter_map(|&j| st.at[j]).collect();
                if s.is_empty() {
                    continue;
                }
                let hs = submatrix(st.hinv.as_ref(), &s, &s);
                let a = inverse(hs.as_ref())?;
                score += trace_quadratic(st.w.as_ref(), &s, a.as_ref()) / st.energy;
            }
            scored.push((score, cl));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let take: Vec<usize> = scored.iter().take(batch).map(|&(_, cl)| cl).collect();
        for (c, st) in consumers.iter().zip(states.iter_mut()) {
            let s: Vec<usize> = take
                .iter()
                .flat_map(|&cl| c.columns[cl].iter().filter_map(|&j| st.at[j]))
                .collect();
            if s.is_empty() {
                continue;
            }
            let n = st.hinv.nrows();
            let in_s: std::collections::HashSet<usize> = s.iter().copied().collect();
            let r: Vec<usize> = (0..n).filter(|j| !in_s.contains(j)).collect();
            let hss_inv = inverse(submatrix(st.hinv.as_ref(), &s, &s).as_ref())?;
            let h_rs = submatrix(st.hinv.as_ref(), &r, &s);
            let all_rows: Vec<usize> = (0..st.w.nrows()).collect();
            let w_s = submatrix(st.w.as_ref(), &all_rows, &s);
            let w_r = submatrix(st.w.as_ref(), &all_rows, &r);
            let h_rr = submatrix(st.hinv.as_ref(), &r, &r);
            // W_R ← W_R − W_S·(H⁻¹_SS)⁻¹·H⁻¹_SR ; H⁻¹_RR ← H⁻¹_RR − H⁻¹_RS·(H⁻¹_SS)⁻¹·H⁻¹_SR.
            let k = &hss_inv * h_rs.transpose();
            st.w = w_r - &w_s * &k;
            st.hinv = h_rr - &h_rs * &k;
            let mut orig_of = vec![usize::MAX; n];
            for (orig, a) in st.at.iter().enumerate() {
                if let Some(cur) = a {
                    orig_of[*cur] = orig;
                }
            }
            let mut next = vec![None; st.at.len()];
            for (new, &cur) in r.iter().enumerate() {
                next[orig_of[cur]] = Some(new);
            }
            st.at = next;
        }
        alive.retain(|cl| !take.contains(cl));
        order.extend(take);
    }
    Ok(order)
}

/// The least-squares refit of `c` without the columns in `removed`: the full K × (C·kh·kw) matrix (zeros
/// in the removed columns) and the bias shift W·μ − W′·μ.
pub fn refit(c: &Consumer, removed: &[usize], damping: f64) -> Result<(Mat<f64>, Vec<f64>), SelectError> {
    let d = c.w.ncols();
    let gone: std::collections::HashSet<usize> = removed.iter().copied().collect();
    let keep: Vec<usize> = (0..d).filter(|j| !gone.contains(j)).collect();
    let h = damped_covariance(&c.stats, damping);
    let h_rr = submatrix(h.as_ref(), &keep, &keep);
    let all: Vec<usize> = (0..d).collect();
    let h_ra = submatrix(h.as_ref(), &keep, &all);
    let llt = h_rr
        .as_ref()
        .llt(Side::Lower)
        .map_err(|_| SelectError::NotPositiveDefinite)?;
    // X = H_RR⁻¹·H_R,:·Wᵀ, so W′_R = Xᵀ.
    let rhs = &h_ra * c.w.transpose();
    let x = faer::linalg::solvers::Solve::solve(&llt, rhs.as_ref());
    let mut w2 = Mat::<f64>::zeros(c.w.nrows(), d);
    for (jj, &j) in keep.iter().enumerate() {
        for i in 0..c.w.nrows() {
            w2[(i, j)] = x[(jj, i)];
        }
    }
    let shift = c.stats.bias_shift(c.w.as_ref(), w2.as_ref());
    Ok((w2, shift))
}

/// `c`'s weights with the columns in `removed` set to zero (no refit).
pub fn dropped(c: &Consumer, removed: &[usize]) -> Mat<f64> {
    let mut w2 = c.w.clone();
    for &j in removed {
        for i in 0..w2.nrows() {
            w2[(i, j)] = 0.0;
        }
    }
    w2
}

/// The L1 order: classes by the summed ‖w‖₁ of their filters, smallest first.
pub fn l1_order(norms: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..norms.len()).collect();
    idx.sort_by(|&a, &b| norms[a].total_cmp(&norms[b]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Conv;
    use proptest::prelude::*;
    use rand::{Rng as _, SeedableRng as _};

    fn conv1x1(k: usize, c: usize) -> Conv {
        Conv {
            name: "c".into(),
            input: "x".into(),
            output: "y".into(),
            weight: "w".into(),
            bias: None,
            kernel: [k, c, 1, 1],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            auto_pad: "NOTSET".into(),
        }
    }

    /// Inputs whose channel j is a copy of channel j − c/2 (for j ≥ c/2), plus noise on the first half.
    fn consumer(k: usize, c: usize, seed: u64, copies: bool) -> Consumer<'static> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (h, w) = (6, 6);
        let cv = conv1x1(k, c);
        let mut stats = PatchStats::new(c);
        for _ in 0..20 {
            let mut x = vec![0f32; c * h * w];
            for (i, v) in x.iter_mut().enumerate() {
                let ch = i / (h * w);
                if !copies || ch < c / 2 {
                    *v = rng.random_range(-1.0..1.0) + 0.3;
                }
            }
            if copies {
                let (a, b) = x.split_at_mut(c / 2 * h * w);
                b.copy_from_slice(&a[..b.len()]);
            }
            stats.add_image(&cv, &x, h, w);
        }
        let wm = Mat::from_fn(k, c, |_, _| rng.random_range(-1.0..1.0));
        let bias = vec![0.1; k];
        let energy = stats.output_energy(wm.as_ref(), &bias);
        Consumer {
            w: wm,
            bias,
            stats: Cow::Owned(stats),
            columns: (0..c).map(|j| vec![j]).collect(),
            energy,
            conv: None,
        }
    }

    #[test]
    fn a_duplicated_channel_is_removed_at_no_cost_with_the_refit() {
        let c = consumer(6, 8, 1, true);
        // Channels 4..8 copy 0..4: removing them and refitting is exact (up to the damping).
        let removed: Vec<usize> = (4..8).collect();
        let (w2, shift) = refit(&c, &removed, 1e-9).unwrap();
        let err = c
            .stats
            .relative_error(c.w.as_ref(), w2.as_ref(), c.energy, Some(&shift));
        assert!(err < 1e-5, "{err}");
        // Without the refit it costs.
        let d = dropped(&c, &removed);
        assert!(c.stats.relative_error(c.w.as_ref(), d.as_ref(), c.energy, None) > 0.1);
        // The greedy order removes one of each duplicated pair before any channel whose twin is gone.
        let order = data_aware_order(&[c], 8, 1, 1e-9).unwrap();
        let first: std::collections::HashSet<usize> = order[..4].iter().map(|&j| j % 4).collect();
        assert_eq!(first.len(), 4, "{order:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn the_refit_is_never_worse_than_dropping_and_the_order_is_a_permutation(seed in 0u64..1000, remove in 1usize..6) {
            let c = consumer(5, 7, seed, false);
            let removed: Vec<usize> = (0..remove).collect();
            let (w2, shift) = refit(&c, &removed, 1e-6).unwrap();
            let e_fit = c.stats.relative_error(c.w.as_ref(), w2.as_ref(), c.energy, Some(&shift));
            let e_drop = c.stats.relative_error(c.w.as_ref(), dropped(&c, &removed).as_ref(), c.energy, None);
            prop_assert!(e_fit <= e_drop + 1e-9, "{} > {}", e_fit, e_drop);
            for &j in &removed {
                for i in 0..5 {
                    prop_assert_eq!(w2[(i, j)], 0.0);
                }
            }
            let mut order = data_aware_order(&[c], 7, 2, 1e-6).unwrap();
            order.sort_unstable();
            prop_assert_eq!(order, (0..7).collect::<Vec<_>>());
        }

        #[test]
        fn obs_score_of_one_class_equals_the_refit_error(seed in 0u64..1000, j in 0usize..7) {
            // The first greedy pick is the class whose removal-with-refit costs least.
            let c = consumer(4, 7, seed, false);
            let errs: Vec<f64> = (0..7).map(|q| {
                let (w2, shift) = refit(&c, &[q], 1e-6).unwrap();
                c.stats.relative_error(c.w.as_ref(), w2.as_ref(), c.energy, Some(&shift))
            }).collect();
            let order = data_aware_order(&[c], 7, 1, 1e-6).unwrap();
            let best = errs.iter().cloned().fold(f64::INFINITY, f64::min);
            prop_assert!(errs[order[0]] <= best * (1.0 + 1e-6) + 1e-12, "{:?} {:?} {}", errs, order, j);
        }
    }

    #[test]
    fn l1_order_is_ascending() {
        assert_eq!(l1_order(&[3.0, 1.0, 2.0, 1.0]), vec![1, 3, 2, 0]);
    }
}
