//! Rank selection: the ladder of candidate ranks of one layer, and the binary search for the smallest rung
//! whose error meets the bound (the talk chose its ratios this way).

use crate::tucker::tucker_params;

/// The candidate rank pairs (R_in, R_out) of a K×C×kh×kw kernel, smallest first, each saving parameters.
///
/// Both ranks grow together at the same fraction of their mode (R_in ≈ f·C, R_out ≈ f·K), so one number
/// orders the candidates and the error falls along the ladder. Ranks are rounded up to `multiple` (tensor
/// cores and SIMD prefer multiples of 8), never above the channels. A 1×1 kernel has R_in = R_out (a rank-R
/// factorisation as two 1×1 convolutions).
pub fn ladder(c: usize, k: usize, taps: usize, multiple: usize) -> Vec<(usize, usize)> {
    let m = multiple.max(1);
    let original = c * k * taps;
    let round = |r: usize, cap: usize| (r.div_ceil(m) * m).min(cap).max(1);
    let mut out: Vec<(usize, usize)> = Vec::new();
    if taps == 1 {
        let cap = c.min(k);
        for r in (1..=cap).map(|r| round(r, cap)) {
            if out.last() != Some(&(r, r)) {
                out.push((r, r));
            }
        }
    } else {
        let steps = c.max(k);
        for s in 1..=steps {
            let pair = (round((s * c).div_ceil(steps), c), round((s * k).div_ceil(steps), k));
            if out.last() != Some(&pair) {
                out.push(pair);
            }
        }
    }
    out.retain(|&(ri, ro)| tucker_params(c, k, taps, ri, ro) < original);
    out
}

/// One evaluated rung.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Trial<R = (usize, usize)> {
    pub ranks: R,
    pub params: usize,
    pub error: f64,
    pub meets: bool,
}

/// The smallest rung of `rungs` whose `error` is at most `bound`, by binary search (the error falls along
/// the ladder), with every rung tried in the order tried. `None` when even the largest saving rung misses.
pub fn smallest_meeting<E, R: Copy>(
    rungs: &[R],
    bound: f64,
    mut error: impl FnMut(R) -> Result<f64, E>,
    mut params: impl FnMut(R) -> usize,
) -> Result<(Option<usize>, Vec<Trial<R>>), E> {
    let mut trials = Vec::new();
    let mut try_at = |i: usize, trials: &mut Vec<Trial<R>>| -> Result<bool, E> {
        let r = rungs[i];
        let e = error(r)?;
        let meets = e <= bound;
        trials.push(Trial {
            ranks: r,
            params: params(r),
            error: e,
            meets,
        });
        Ok(meets)
    };
    let Some(last) = rungs.len().checked_sub(1) else {
        return Ok((None, trials));
    };
    if !try_at(last, &mut trials)? {
        return Ok((None, trials));
    }
    // Invariant: rung `hi` meets the bound; every rung below `lo` that was tried misses it.
    let (mut lo, mut hi) = (0usize, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if try_at(mid, &mut trials)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((Some(hi), trials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ladder_saves_parameters_and_grows() {
        let l = ladder(512, 1024, 9, 8);
        assert!(l.iter().all(|&(a, b)| a % 8 == 0 && b % 8 == 0));
        assert!(l
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0] != w[1]));
        let &(a, b) = l.last().unwrap();
        assert!(tucker_params(512, 1024, 9, a, b) < 512 * 1024 * 9);
        // 3 input channels: R_in stays at most 3.
        assert!(ladder(3, 16, 9, 8).iter().all(|&(a, _)| a <= 3));
        // A 1×1 kernel saves only below C·K/(C+K).
        let l1 = ladder(64, 64, 1, 1);
        assert_eq!(l1.last(), Some(&(31, 31)));
    }

    proptest! {
        #[test]
        fn binary_search_finds_the_smallest_meeting_rung(errors in proptest::collection::vec(0.0f64..1.0, 1..40), bound in 0.0f64..1.0) {
            // A falling error along the ladder.
            let mut e = errors.clone();
            e.sort_by(|a, b| b.total_cmp(a));
            let rungs: Vec<(usize, usize)> = (0..e.len()).map(|i| (i + 1, i + 1)).collect();
            let (found, trials) = smallest_meeting::<(), _>(&rungs, bound, |r| Ok(e[r.0 - 1]), |r| r.0).unwrap();
            let want = e.iter().position(|&x| x <= bound);
            prop_assert_eq!(found, want);
            if let Some(i) = found {
                prop_assert!(e[i] <= bound);
                if i > 0 {
                    prop_assert!(e[i - 1] > bound);
                    // The rung below was tried and missed.
                    prop_assert!(trials.iter().any(|t| t.ranks == rungs[i - 1] && !t.meets));
                }
            }
            prop_assert!(trials.len() <= 2 + (e.len() as f64).log2().ceil() as usize);
        }
    }
}
