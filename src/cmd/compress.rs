//! `kestrel compress`: decompose a trained detector's convolutions (Tucker-2) where the device says it pays,
//! keeping detection fidelity on held-out frames; or (`--method zeros`) only write zeros, to show what that
//! does and does not change. `--package` also writes the model as `OUT.zst` with its sha256 beside it.

use std::io::IsTerminal as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kestrel_compress::compress::{self, images_in, Event, Job, Options, Probe, Report};
use kestrel_compress::prune::{Importance, PruneOptions, PruneRun};
use kestrel_compress::timing::TimingPlan;
use kestrel_compress::tucker::Factorisation;
use kestrel_compress::zeros;
use kestrel_infer::model::SessionOptions;
use kestrel_infer::runtime;

use crate::exit::{Exit, Failure, OrExit as _};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Tucker-2 decomposition of each convolution's channel modes.
    Tucker,
    /// Structured channel pruning: whole filters and the matching input channels go.
    Prune,
    /// Pruning, then Tucker-2 of what is left.
    #[value(name = "prune,tucker")]
    PruneTucker,
    /// Magnitude pruning that only sets weights to zero (--zeros-ratio of each convolution's): the same
    /// parameters, file size and speed, a smaller zstd size. Needs no calibration frames.
    Zeros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportanceArg {
    /// Greedy least-squares on the captured inputs, the next layers' weights refitted.
    DataAware,
    /// The L1 norm of each filter, the next layers' columns dropped.
    L1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeArg {
    /// The layer's real inputs on the calibration frames.
    Calibration,
    /// Random tensors of the layer's input shape (the talk's method; equivalent to the weight error).
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FactorArg {
    /// Whitened by the captured input covariance, output side fitted to the captured outputs.
    DataAware,
    /// HOSVD of the kernel (plus --hooi-iterations refinements).
    Hosvd,
}

/// clap value parser: a number strictly between 0 and 1.
fn open_unit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number strictly between 0 and 1")),
    }
}

/// clap value parser: a number from 0 to 1.
fn closed_unit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

/// clap value parser: a number from 0 up to (not including) 1.
fn below_one(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 up to 1 (excluded)")),
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("`{s}` is not a whole number above 0")),
    }
}

#[derive(Args)]
pub struct CompressArgs {
    /// The float32 ONNX model to compress.
    #[arg(long, value_name = "IN.onnx")]
    pub model: PathBuf,
    /// Where to write the compressed model (atomically; never the input).
    #[arg(long, value_name = "OUT.onnx")]
    pub out: PathBuf,
    /// Calibration images (JPEG/PNG): the layers' real inputs are captured on them and their mirror images.
    /// Required by --method tucker; --method zeros uses none.
    #[arg(long, value_name = "DIR")]
    pub calibration: Option<PathBuf>,
    /// Held-out images for the whole-model fidelity check (default: every third calibration image is held
    /// out instead of calibrating).
    #[arg(long, value_name = "DIR")]
    pub eval: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "tucker")]
    pub method: Method,
    /// --method zeros: the fraction of each convolution's weights (those of smallest |w|) set to zero.
    #[arg(long, value_name = "R", default_value_t = 0.5, value_parser = closed_unit)]
    pub zeros_ratio: f64,
    /// Also write the model as OUT.zst (zstd level 19, frame checksum on) and OUT.zst.sha256 (sha256sum
    /// format), for transfer; `run`, `detect`, `bench` and `evaluate` load the .zst directly.
    #[arg(long)]
    pub package: bool,
    /// Largest relative output error ‖y − y′‖/‖y‖ allowed per layer.
    #[arg(long, value_name = "E", default_value_t = 0.1, value_parser = open_unit)]
    pub max_layer_error: f64,
    /// Where each layer's error is measured.
    #[arg(long, value_enum, default_value = "calibration")]
    pub probe: ProbeArg,
    /// How the factors are chosen (default: data-aware with the calibration probe, HOSVD with random).
    #[arg(long, value_enum)]
    pub factorisation: Option<FactorArg>,
    /// Data-aware factors: shrink the captured covariances towards the identity by this much (0: fit the
    /// calibration frames only; 1: the data-blind HOSVD directions). The default was the best of 0, 0.5 and
    /// 0.9 on yolov3-tiny's largest layer (README, "Making a model lighter").
    #[arg(long, default_value_t = 0.9, value_parser = closed_unit)]
    pub shrinkage: f64,
    /// HOOI refinements of the HOSVD factors.
    #[arg(long, default_value_t = 0)]
    pub hooi_iterations: usize,
    /// Round ranks up to a multiple of this (tensor cores and SIMD prefer 8).
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub rank_multiple: usize,
    /// Smallest whole-model mAP@0.5 against the original on the held-out frames; below it the bound is
    /// tightened.
    #[arg(long, default_value_t = 0.95, value_parser = open_unit)]
    pub min_fidelity: f64,
    /// Keep a decomposition only where the one-layer model is faster on the device.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub require_faster: bool,
    /// Interleaved rounds of the whole-model fps comparison (0: skip it).
    #[arg(long, default_value_t = 6)]
    pub fps_rounds: usize,
    /// Interleaved rounds of each one-layer timing.
    #[arg(long, default_value_t = 7, value_parser = positive)]
    pub timing_rounds: usize,
    /// Fixed ranks for named layers instead of the search, e.g. `conv_33=256:512` (R_in:R_out; a 1×1 layer
    /// takes one rank, `conv_37=64`). Repeat or separate with commas.
    #[arg(long, value_name = "LAYER=R_IN:R_OUT", value_delimiter = ',', value_parser = layer_ranks)]
    pub ranks: Vec<(String, (usize, usize))>,
    /// Leave these layers (node names) as they are. Repeat or separate with commas.
    #[arg(long, value_name = "LAYER", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Also decompose the detection head's output convolutions (left alone by default: their outputs are the
    /// detections' logits).
    #[arg(long)]
    pub include_head: bool,
    /// Skip the comparisons (other factorisation at the same ranks, the other probe's search).
    #[arg(long)]
    pub no_compare: bool,
    /// Pruning: how channels are ranked.
    #[arg(long, value_enum, default_value = "data-aware")]
    pub importance: ImportanceArg,
    /// Pruning: kept channel counts are multiples of this.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub channel_multiple: usize,
    /// Pruning: ridge on the captured input covariance of the refit, as a fraction of its mean diagonal.
    #[arg(long, default_value_t = 0.01, value_parser = closed_unit)]
    pub damping: f64,
    /// Pruning: remove this fraction of every group's channels instead of searching per group (0 removes
    /// nothing: the graph is rewritten unchanged).
    #[arg(long, value_name = "R", value_parser = below_one)]
    pub uniform_ratio: Option<f64>,
    /// Pruning's own floor on mAP@0.5 (default: --min-fidelity for `prune`; halfway between it and 1 for
    /// `prune,tucker`, leaving the rest of the budget to the Tucker stage).
    #[arg(long, value_name = "F", value_parser = open_unit)]
    pub prune_min_fidelity: Option<f64>,
    /// `prune,tucker`: the Tucker stage's bound on each layer's error (--max-layer-error is the pruning's).
    #[arg(long, value_name = "E", default_value_t = 0.1, value_parser = open_unit)]
    pub tucker_max_layer_error: f64,
    /// Write the full report (JSON) here.
    #[arg(long, value_name = "REPORT.json")]
    pub report: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution providers to time and check on, in order of preference.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',', default_value = "cpu")]
    pub ep: Vec<super::Ep>,
    /// Refuse to run unless this provider is registered.
    #[arg(long, value_name = "EP", value_enum)]
    pub require_ep: Option<super::Ep>,
}

/// clap value parser: `NAME=R_IN:R_OUT` or `NAME=R`.
fn layer_ranks(s: &str) -> Result<(String, (usize, usize)), String> {
    let bad = || format!("`{s}` is not LAYER=R_IN:R_OUT (or LAYER=R for a 1×1 layer) with ranks above 0");
    let (name, r) = s.rsplit_once('=').ok_or_else(bad)?;
    let (a, b) = r.split_once(':').unwrap_or((r, r));
    let (a, b) = (
        a.parse::<usize>().map_err(|_| bad())?,
        b.parse::<usize>().map_err(|_| bad())?,
    );
    if name.is_empty() || a == 0 || b == 0 {
        return Err(bad());
    }
    Ok((name.to_string(), (a, b)))
}

/// Calibration and evaluation frames: as given, or every third calibration image held out.
fn frames(a: &CompressArgs, calibration: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), compress::CompressError> {
    let cal = images_in(calibration, "calibration")?;
    match &a.eval {
        Some(dir) => Ok((cal, images_in(dir, "evaluation")?)),
        None => {
            let (held, kept): (Vec<_>, Vec<_>) = cal.into_iter().enumerate().partition(|(i, _)| i % 3 == 2);
            let strip = |v: Vec<(usize, PathBuf)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
            let (kept, held) = (strip(kept), strip(held));
            if held.is_empty() {
                return Err(compress::CompressError::NoFrames {
                    what: "held-out (give --eval DIR, or at least 3 calibration images)",
                    dir: calibration.to_path_buf(),
                });
            }
            Ok((kept, held))
        }
    }
}

/// Progress on one terminal line, or log lines when stderr is not a terminal.
fn progress_printer() -> impl FnMut(Event<'_>) {
    let tty = std::io::stderr().is_terminal();
    move |e| {
        let line = match e {
            Event::Stage(s) => s.to_string(),
            Event::Layer {
                index,
                total,
                name,
                what,
            } => format!("[{}/{total}] {what}: {name}", index + 1),
        };
        if tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            log::info!("{line}");
        }
    }
}

fn print_summary(r: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let on = if r.execution_provider.is_empty() {
        String::new()
    } else {
        format!(", on {}", r.execution_provider)
    };
    writeln!(
        out,
        "kestrel compress: {} (sha256 {}…), tucker, probe {:?}, factors {:?}, bound {:.4} (asked {:.4}){on}",
        r.source.path,
        &r.source.sha256[..12.min(r.source.sha256.len())],
        r.probe,
        r.factorisation,
        r.bound_used,
        r.max_layer_error,
    )?;
    for (what, f) in [("calibration", &r.calibration), ("evaluation", &r.evaluation)] {
        if f.files > 0 {
            writeln!(
                out,
                "{what}: {} of {} images used, {} skipped",
                f.used,
                f.files,
                f.skipped.len()
            )?;
        }
        for s in &f.skipped {
            writeln!(out, "  skipped {}: {}", s.file, s.reason)?;
        }
    }
    if !r.folded_batch_norms.is_empty() {
        writeln!(
            out,
            "folded {} BatchNormalization(s) into their convolutions",
            r.folded_batch_norms.len()
        )?;
    }
    writeln!(
        out,
        "| layer | kernel | input | ranks | params before → after | error calib / random | other factors calib | speed-up | decision |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for l in &r.layers {
        let k = l
            .kernel
            .map_or("-".into(), |k| format!("{}×{}×{}×{}", k[0], k[1], k[2], k[3]));
        let i = l.input.map_or("-".into(), |i| format!("{}×{}×{}", i[1], i[2], i[3]));
        let ranks = l.ranks.map_or("-".into(), |r| format!("{}, {}", r.0, r.1));
        let e = l
            .errors
            .map_or("-".into(), |e| format!("{:.4} / {:.4}", e.calibration, e.random));
        let o = l
            .other_factorisation
            .map_or("-".into(), |e| format!("{:.4}", e.calibration));
        let t = l.timing.map_or("-".into(), |t| format!("{}", t.speedup));
        writeln!(
            out,
            "| {} | {k} | {i} | {ranks} | {} → {} | {e} | {o} | {t} | {} |",
            l.name,
            l.params_before,
            l.params_after,
            if l.decomposed {
                "decomposed".to_string()
            } else {
                format!("kept: {}", l.reason)
            }
        )?;
    }
    print_tries(&r.tries, &r.comparisons, "layers decomposed", out)?;
    if let Some(o) = &r.output {
        let f = r.fidelity.as_ref().map_or(f64::NAN, |f| f.map50);
        writeln!(
            out,
            "params {} → {} ({:+.1} %), MACs of the decomposable convolutions {:.3} → {:.3} G ({:+.1} %), mAP@0.5 vs original {:.4}",
            r.source.params,
            o.params,
            100.0 * (o.params as f64 / r.source.params as f64 - 1.0),
            r.source.conv_macs as f64 / 1e9,
            o.conv_macs as f64 / 1e9,
            100.0 * (o.conv_macs as f64 / r.source.conv_macs.max(1) as f64 - 1.0),
            f
        )?;
    }
    if let Some(f) = &r.fps {
        writeln!(
            out,
            "bare fps ({} rounds interleaved): before {}, after {}, after/before {}",
            f.rounds, f.before_fps, f.after_fps, f.ratio
        )?;
    }
    for s in &r.stages {
        writeln!(out, "time: {} {:.1} s", s.stage, s.seconds)?;
    }
    if let Some(m) = r.peak_rss_mib {
        writeln!(out, "peak RSS {m:.0} MiB")?;
    }
    if let Some(why) = &r.nothing_to_do {
        writeln!(out, "nothing to do: {why}; no model written")?;
    } else if let Some(o) = &r.output {
        writeln!(out, "wrote {} (sha256 {})", o.path, o.sha256)?;
    }
    Ok(())
}

/// The whole-model tries and the comparisons, one line each.
fn print_tries(
    tries: &[compress::Try],
    comparisons: &[compress::Variant],
    changed: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    for t in tries {
        writeln!(
            out,
            "try: bound {:.4}: {} {changed}, {} params, mAP@0.5 {:.4} {}",
            t.max_layer_error,
            t.decomposed_layers,
            t.params,
            t.map50,
            if t.meets { "meets" } else { "short" }
        )?;
    }
    for v in comparisons {
        writeln!(
            out,
            "compare: {}: {} params, {:.3} GMACs, mAP@0.5 {:.4}, mAP@0.5:0.95 {:.4}",
            v.what,
            v.params,
            v.macs as f64 / 1e9,
            v.map50,
            v.map50_95
        )?;
    }
    Ok(())
}

fn print_prune_summary(r: &PruneRun, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let p = &r.prune;
    writeln!(
        out,
        "kestrel compress: {} (sha256 {}…), {}, {} channels, bound {:.4} (asked {:.4}), on {}",
        p.source.path,
        &p.source.sha256[..12.min(p.source.sha256.len())],
        r.method,
        p.importance.name(),
        p.bound_used,
        p.max_layer_error,
        p.execution_provider,
    )?;
    writeln!(
        out,
        "| group (convolutions) | channels kept | consumers | error data-aware / L1 / random | decision |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for g in &p.groups {
        let e = g.errors.map_or("-".into(), |e| {
            format!("{:.4} / {:.4} / {:.4}", e.data_aware, e.l1, e.random)
        });
        writeln!(
            out,
            "| {} | {} / {} | {} | {e} | {} |",
            g.group.convs.join(" + "),
            g.kept,
            g.group.channels,
            g.group.consumers.join(", "),
            if g.pruned {
                "pruned".to_string()
            } else {
                format!("kept: {}", g.reason)
            }
        )?;
    }
    print_tries(&p.tries, &p.comparisons, "groups pruned", out)?;
    if let Some(t) = &r.tucker {
        writeln!(out, "tucker stage on the pruned model (fidelity against the original):")?;
        print_summary(t, out)?;
    }
    writeln!(
        out,
        "| stage | params | conv GMACs | mAP@0.5 | mAP@0.5:0.95 | bare fps before → after (ratio) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for s in &r.stages {
        let f = s.fps.as_ref().map_or("-".into(), |f| {
            format!("{} → {} ({})", f.before_fps, f.after_fps, f.ratio)
        });
        writeln!(
            out,
            "| {} | {} | {:.3} | {:.4} | {:.4} | {f} |",
            s.stage,
            s.params,
            s.conv_macs as f64 / 1e9,
            s.map50,
            s.map50_95
        )?;
    }
    writeln!(out, "time: {:.1} s", r.seconds)?;
    if let Some(m) = r.peak_rss_mib {
        writeln!(out, "peak RSS {m:.0} MiB")?;
    }
    match (&r.nothing_to_do, &r.output) {
        (Some(why), _) => writeln!(out, "nothing to do: {why}; no model written")?,
        (None, Some(o)) => writeln!(out, "wrote {} (sha256 {})", o.path, o.sha256)?,
        (None, None) => {}
    }
    Ok(())
}

pub fn run(ort: Option<&Path>, a: &CompressArgs) -> Result<Exit, Failure> {
    check_package_out(a)?;
    if a.method == Method::Zeros {
        return run_zeros(ort, a);
    }
    kestrel_compress::model::check_output(&a.model, &a.out).or_exit(Exit::Usage)?;
    let Some(calibration) = &a.calibration else {
        return Err(Failure::new(
            Exit::Usage,
            anyhow::anyhow!("--calibration DIR is required with --method tucker"),
        ));
    };
    let (calibration, evaluation) = frames(a, calibration).or_exit(Exit::Failed)?;
    let rt = runtime::init(ort).or_exit(Exit::Setup)?;
    let probe = match a.probe {
        ProbeArg::Calibration => Probe::Calibration,
        ProbeArg::Random => Probe::Random,
    };
    let factorisation = match (a.factorisation, probe) {
        (Some(FactorArg::DataAware), _) | (None, Probe::Calibration) => Factorisation::DataAware,
        (Some(FactorArg::Hosvd), _) | (None, Probe::Random) => Factorisation::Hosvd {
            hooi_iterations: a.hooi_iterations,
        },
    };
    let session = SessionOptions {
        intra_threads: a.threads,
        ep: kestrel_infer::ep::EpOptions {
            providers: a.ep.iter().map(|&e| e.into()).collect(),
            require: a.require_ep.map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Err((_, reason)) = session.ep.validate() {
        return Err(Failure::new(Exit::Usage, anyhow::anyhow!("--ep: {reason}")));
    }
    let opts = Options {
        max_layer_error: a.max_layer_error,
        probe,
        factorisation,
        rank_multiple: a.rank_multiple,
        min_fidelity: a.min_fidelity,
        require_faster: a.require_faster,
        session,
        timing: TimingPlan {
            rounds: a.timing_rounds,
            ..TimingPlan::default()
        },
        fps_rounds: a.fps_rounds,
        compare: !a.no_compare,
        fixed_ranks: a.ranks.iter().cloned().collect(),
        shrinkage: a.shrinkage,
        include_head: a.include_head,
        exclude: a.exclude.clone(),
        ..Options::default()
    };
    let job = Job {
        model: a.model.clone(),
        out: a.out.clone(),
        calibration,
        evaluation,
        reference: None,
    };
    let mut progress = progress_printer();
    if a.method != Method::Tucker {
        let popts = PruneOptions {
            importance: match a.importance {
                ImportanceArg::DataAware => Importance::DataAware,
                ImportanceArg::L1 => Importance::L1,
            },
            channel_multiple: a.channel_multiple,
            damping: a.damping,
            uniform_ratio: a.uniform_ratio,
            ..PruneOptions::default()
        };
        let tucker = (a.method == Method::PruneTucker).then_some(a.tucker_max_layer_error);
        let result = kestrel_compress::prune::run(rt, &job, &opts, &popts, tucker, a.prune_min_fidelity, &mut progress);
        if std::io::stderr().is_terminal() {
            let _ = writeln!(std::io::stderr());
        }
        let report = result.or_exit(Exit::Failed)?;
        let written = report.output.is_some() && report.nothing_to_do.is_none();
        return finish(a, &report, written, print_prune_summary);
    }
    let result = compress::compress(rt, &job, &opts, &mut progress);
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr());
    }
    let report = result.or_exit(Exit::Failed)?;
    let written = report.output.is_some() && report.nothing_to_do.is_none();
    finish(a, &report, written, print_summary)
}

/// After a run that wrote a model (`written`): the package (`--package`), the report (`--report`, with the
/// package in it) and the summary on stdout.
fn finish<R: serde::Serialize>(
    a: &CompressArgs,
    report: &R,
    written: bool,
    summary: fn(&R, &mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<Exit, Failure> {
    let packaged = if a.package && written {
        Some(package_written(&a.out)?)
    } else {
        None
    };
    if let Some(p) = &a.report {
        let mut value = serde_json::to_value(report)
            .context("serialising the report")
            .or_exit(Exit::Failed)?;
        if let (Some(obj), Some(pk)) = (value.as_object_mut(), &packaged) {
            obj.insert("package".into(), serde_json::json!(pk));
        }
        write_report(p, &value)?;
    }
    let mut out = std::io::stdout().lock();
    summary(report, &mut out)
        .and_then(|()| packaged.as_ref().map_or(Ok(()), |pk| print_package(pk, &mut out)))
        .context("writing the summary")
        .or_exit(Exit::Failed)?;
    Ok(Exit::Success)
}

/// `--package` writes `OUT.zst`: an `--out` that is itself `.zst` would be an uncompressed model under a
/// package's name, which the loaders would refuse.
fn check_package_out(a: &CompressArgs) -> Result<(), Failure> {
    if kestrel_infer::package::is_package(&a.out) {
        return Err(Failure::new(
            Exit::Usage,
            anyhow::anyhow!(
                "--out {} ends in .zst: give the ONNX file's name (--package writes OUT.zst beside it)",
                a.out.display()
            ),
        ));
    }
    Ok(())
}

/// The package of the model written at `out`.
fn package_written(out: &Path) -> Result<kestrel_compress::package::Packaged, Failure> {
    let bytes = std::fs::read(out)
        .with_context(|| format!("reading {} to package it", out.display()))
        .or_exit(Exit::Failed)?;
    kestrel_compress::package::write_package(out, &bytes).or_exit(Exit::Failed)
}

fn write_report(p: &Path, report: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(report)
        .context("serialising the report")
        .or_exit(Exit::Failed)?;
    kestrel_compress::model::write_atomic(p, text.as_bytes()).or_exit(Exit::Failed)
}

fn print_package(p: &kestrel_compress::package::Packaged, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "packaged {} ({} bytes, zstd level {}, of {} bytes) and {} (sha256 {})",
        p.path, p.bytes, p.zstd_level, p.model_bytes, p.sidecar, p.sha256
    )
}

/// `--method zeros`: no calibration, no search; the sizes and fps before and after.
fn run_zeros(ort: Option<&Path>, a: &CompressArgs) -> Result<Exit, Failure> {
    kestrel_compress::model::check_output(&a.model, &a.out).or_exit(Exit::Usage)?;
    let session = SessionOptions {
        intra_threads: a.threads,
        ep: kestrel_infer::ep::EpOptions {
            providers: a.ep.iter().map(|&e| e.into()).collect(),
            require: a.require_ep.map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    };
    if let Err((_, reason)) = session.ep.validate() {
        return Err(Failure::new(Exit::Usage, anyhow::anyhow!("--ep: {reason}")));
    }
    // ONNX Runtime only for the fps comparison.
    let rt = if a.fps_rounds > 0 {
        Some(runtime::init(ort).or_exit(Exit::Setup)?)
    } else {
        None
    };
    let opts = zeros::ZerosOptions {
        ratio: a.zeros_ratio,
        include_head: a.include_head,
        exclude: a.exclude.clone(),
        session,
        fps_rounds: a.fps_rounds,
        package: a.package,
        ..zeros::ZerosOptions::default()
    };
    let mut progress = progress_printer();
    let result = zeros::zeros(rt, &a.model, &a.out, &opts, &mut progress);
    if std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr());
    }
    let report = result.or_exit(Exit::Failed)?;
    if let Some(p) = &a.report {
        write_report(p, &report)?;
    }
    print_zeros_summary(&report, &mut std::io::stdout().lock())
        .context("writing the summary")
        .or_exit(Exit::Failed)?;
    Ok(Exit::Success)
}

fn print_zeros_summary(r: &zeros::ZerosReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let pct = |a: f64, b: f64| 100.0 * (a / b.max(1.0) - 1.0);
    writeln!(
        out,
        "kestrel compress: {} (sha256 {}…), zeros, ratio {} of each convolution's weights{}",
        r.source.path,
        &r.source.sha256[..12.min(r.source.sha256.len())],
        r.ratio,
        if r.include_head { ", head included" } else { "" }
    )?;
    writeln!(
        out,
        "| layer | shape | params | zeroed | zero after | largest |w| zeroed |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for l in &r.layers {
        let shape: Vec<String> = l.shape.iter().map(i64::to_string).collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} % | {:.3e} |",
            l.name,
            shape.join("×"),
            l.params,
            l.zeroed,
            100.0 * l.zeros_after as f64 / l.params.max(1) as f64,
            l.threshold
        )?;
    }
    for l in &r.left {
        writeln!(out, "left: {}: {}", l.name, l.reason)?;
    }
    if let Some(o) = &r.output {
        let s = &r.source;
        writeln!(
            out,
            "params {} → {} (zero: {} → {}), {} of {} convolution weights zeroed",
            s.params, o.params, s.zero_params, o.zero_params, r.zeroed, r.conv_weights
        )?;
        writeln!(
            out,
            "file {} → {} bytes ({:+} bytes: the metadata entry)",
            s.file_bytes,
            o.file_bytes,
            o.file_bytes as i64 - s.file_bytes as i64
        )?;
        writeln!(
            out,
            "zstd (level {}) {} → {} bytes ({:+.1} %)",
            r.zstd_level,
            s.zstd_bytes,
            o.zstd_bytes,
            pct(o.zstd_bytes as f64, s.zstd_bytes as f64)
        )?;
    }
    if let Some(f) = &r.fps {
        writeln!(
            out,
            "bare fps ({} rounds interleaved): before {}, after {}, after/before {}",
            f.rounds, f.before_fps, f.after_fps, f.ratio
        )?;
    }
    for s in &r.stages {
        writeln!(out, "time: {} {:.1} s", s.stage, s.seconds)?;
    }
    if let Some(m) = r.peak_rss_mib {
        writeln!(out, "peak RSS {m:.0} MiB")?;
    }
    if let Some(why) = &r.nothing_to_do {
        writeln!(out, "nothing to do: {why}; no model written")?;
    } else if let Some(o) = &r.output {
        writeln!(out, "wrote {} (sha256 {})", o.path, o.sha256)?;
    }
    if let Some(p) = &r.package {
        print_package(p, out)?;
    }
    Ok(())
}
