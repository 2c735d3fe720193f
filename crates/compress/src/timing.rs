//! Measured on the device (the talk's first rule): a layer before and after, as one-layer models with the
//! layer's real input shape, and whole models' bare inference rate, both interleaved (A, B, A, B, …) so that
//! the host's speed changes hit both alike; ratios are reported with their spread over the rounds.

use std::path::Path;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::TensorRef;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};
use thiserror::Error;

use crate::model::{write_atomic, ModelFileError};
use crate::onnx::ModelProto;
use kestrel_infer::model::{plain_session, Detector, ModelError, SessionOptions};
use kestrel_infer::runtime::Runtime;

#[derive(Debug, Error)]
pub enum TimingError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("running a one-layer model: {0}")]
    Run(#[source] ort::Error),
}

/// Median and range of a series.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Self {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Self::default();
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Self {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}–{:.3}]", self.median, self.min, self.max)
    }
}

/// A layer timed before and after.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LayerTiming {
    pub original_ms: f64,
    pub decomposed_ms: f64,
    /// original / decomposed time per round.
    pub speedup: Spread,
    pub rounds: usize,
    pub runs_per_round: usize,
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct TimingPlan {
    pub rounds: usize,
    /// Each block of runs lasts at least this long.
    pub block: Duration,
}

impl Default for TimingPlan {
    fn default() -> Self {
        Self {
            rounds: 7,
            block: Duration::from_millis(25),
        }
    }
}

fn run_n(s: &mut Session, name: &str, shape: [usize; 4], x: &[f32], n: usize) -> Result<Duration, TimingError> {
    let t0 = Instant::now();
    for _ in 0..n {
        let t = TensorRef::from_array_view((shape, x)).map_err(TimingError::Run)?;
        s.run(ort::inputs![name => t]).map_err(TimingError::Run)?;
    }
    Ok(t0.elapsed())
}

fn open(rt: &Runtime, opts: &SessionOptions, dir: &Path, file: &str, m: &ModelProto) -> Result<Session, TimingError> {
    let p = dir.join(file);
    write_atomic(&p, &m.encode_to_vec())?;
    Ok(plain_session(rt, &p, opts)?.0)
}

/// Time `original` and `decomposed` (one-layer models with input "x" of `shape`) interleaved on the
/// configured providers. `dir` holds the model files (a TensorRT engine is built from a file).
pub fn time_layer(
    rt: &Runtime,
    opts: &SessionOptions,
    dir: &Path,
    original: &ModelProto,
    decomposed: &ModelProto,
    shape: [usize; 4],
    plan: TimingPlan,
) -> Result<LayerTiming, TimingError> {
    let mut a = open(rt, opts, dir, "layer-original.onnx", original)?;
    let mut b = open(rt, opts, dir, "layer-decomposed.onnx", decomposed)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let x: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    // Warm up both (first runs allocate and pick kernels), then size the blocks from the slower.
    run_n(&mut a, "x", shape, &x, 2)?;
    run_n(&mut b, "x", shape, &x, 2)?;
    let one = run_n(&mut a, "x", shape, &x, 1)?.max(run_n(&mut b, "x", shape, &x, 1)?);
    let n = (plan.block.as_secs_f64() / one.as_secs_f64().max(1e-6))
        .ceil()
        .clamp(1.0, 1000.0) as usize;
    let (mut ta, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.rounds.max(1) {
        // Alternate which goes first, so neither always follows the other's cache state.
        let (da, db) = if round % 2 == 0 {
            let da = run_n(&mut a, "x", shape, &x, n)?;
            (da, run_n(&mut b, "x", shape, &x, n)?)
        } else {
            let db = run_n(&mut b, "x", shape, &x, n)?;
            (run_n(&mut a, "x", shape, &x, n)?, db)
        };
        let (ma, mb) = (da.as_secs_f64() * 1e3 / n as f64, db.as_secs_f64() * 1e3 / n as f64);
        ta.push(ma);
        tb.push(mb);
        ratio.push(ma / mb);
    }
    Ok(LayerTiming {
        original_ms: Spread::of(&ta).median,
        decomposed_ms: Spread::of(&tb).median,
        speedup: Spread::of(&ratio),
        rounds: plan.rounds.max(1),
        runs_per_round: n,
    })
}

/// Two whole models' bare inference rate, interleaved.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct FpsComparison {
    pub before_fps: Spread,
    pub after_fps: Spread,
    /// after / before per round.
    pub ratio: Spread,
    pub rounds: usize,
    pub runs_per_round: usize,
}

/// Bare inference (`session.run` on a fixed preprocessed tensor, as `kestrel bench`'s (a)) of `before` and
/// `after`, interleaved.
pub fn compare_models(
    rt: &Runtime,
    opts: &SessionOptions,
    before: &Path,
    after: &Path,
    rounds: usize,
    runs: usize,
) -> Result<FpsComparison, TimingError> {
    let mut a = Detector::load(rt, before, None, opts)?;
    let mut b = Detector::load(rt, after, None, opts)?;
    let (ia, ib) = (a.new_input(), b.new_input());
    let mut cands = Vec::new();
    a.warm_up(2)?;
    b.warm_up(2)?;
    let block = |d: &mut Detector, input, cands: &mut Vec<_>| -> Result<f64, TimingError> {
        let t0 = Instant::now();
        for _ in 0..runs.max(1) {
            d.infer(input, 0.25, cands)?;
        }
        Ok(runs.max(1) as f64 / t0.elapsed().as_secs_f64())
    };
    let (mut fa, mut fb, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let (x, y) = if round % 2 == 0 {
            let x = block(&mut a, &ia, &mut cands)?;
            (x, block(&mut b, &ib, &mut cands)?)
        } else {
            let y = block(&mut b, &ib, &mut cands)?;
            (block(&mut a, &ia, &mut cands)?, y)
        };
        fa.push(x);
        fb.push(y);
        r.push(y / x);
    }
    Ok(FpsComparison {
        before_fps: Spread::of(&fa),
        after_fps: Spread::of(&fb),
        ratio: Spread::of(&r),
        rounds: rounds.max(1),
        runs_per_round: runs.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_of_a_series() {
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0]).median, 1.5);
    }
}
