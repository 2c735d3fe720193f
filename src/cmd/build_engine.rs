//! `kestrel build-engine`: build (or find) and cache the TensorRT engine for a config's model ahead of flight.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use kestrel_daemon::config::Config;
use kestrel_infer::engine_cache::EngineCache;
use kestrel_infer::ep::{
    available_providers, engine_key, precheck, probe_facts, EngineState, EpError, EpKind, MissingEngine, ModelFacts,
};

use crate::exit::{Exit, Failure, OrExit as _};

#[derive(Args)]
pub struct BuildEngineArgs {
    /// Configuration file: model, [runtime.tensorrt] options and the engine-cache directory.
    #[arg(long, short, value_name = "PATH", default_value = kestrel_daemon::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Build even when a valid engine is cached (replaces it).
    #[arg(long)]
    pub force: bool,
}

pub fn run(cli_ort: Option<&Path>, a: &BuildEngineArgs) -> Result<Exit, Failure> {
    let cfg = Config::load(&a.config)?;
    let summary = build_engine(cli_ort, &cfg, a.force).or_exit(Exit::Setup)?;
    let _ = writeln!(std::io::stdout(), "{summary}");
    Ok(Exit::Success)
}

/// `kestrel build-engine`: build (or find) the TensorRT engine for `cfg`'s model with its
/// `[runtime.tensorrt]` settings, printing what it does with the elapsed time; returns the summary.
fn build_engine(cli_ort: Option<&Path>, cfg: &Config, force: bool) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let step = |what: &str| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "[{:7.1} s] {what}", t0.elapsed().as_secs_f64());
    };
    step("loading ONNX Runtime");
    let rt = kestrel_infer::runtime::init(cli_ort.or(cfg.runtime.ort_lib.as_deref()))?;
    step(&format!("ONNX Runtime {} from {}", rt.version, rt.library.display()));
    step(&format!("GPU: {}", kestrel_infer::gpu::describe()));
    let (_, intra) = kestrel_daemon::assemble::thread_budget(cfg);
    let mut opts = kestrel_daemon::assemble::session_options(cfg, intra);
    opts.ep.providers = vec![EpKind::Tensorrt];
    opts.ep.require = Some(EpKind::Tensorrt);
    opts.ep.missing_engine = MissingEngine::Build;
    opts.io_binding = false;
    let available = available_providers();
    let facts = probe_facts(&available, &rt.library, &opts.ep.providers);
    if let Err(reason) = precheck(EpKind::Tensorrt, &facts) {
        return Err(EpError::Required {
            kind: EpKind::Tensorrt,
            reason: reason.into(),
        })
        .context("kestrel build-engine needs the TensorRT execution provider");
    }
    let model = &cfg.model.path;
    step(&format!("hashing {}", model.display()));
    let input_shape = kestrel_infer::model::input_shape_of(rt, model)?;
    let key = engine_key(
        &opts.ep.tensorrt,
        &rt.version,
        &ModelFacts {
            path: model,
            input_shape,
        },
        &facts,
    )?;
    let cache = EngineCache::new(
        opts.ep
            .engine_cache_dir
            .clone()
            .unwrap_or_else(kestrel_infer::engine_cache::root_from_env),
    );
    step(&format!("cache key {} ({})", key.id(), key.describe()));
    if force {
        let dir = cache.entry_dir(&key);
        if dir.exists() {
            step(&format!("--force: removing {}", dir.display()));
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    step(&format!(
        "building the TensorRT engine into {} (minutes on a Jetson; progress every 10 s)",
        cache.root().display()
    ));
    let mut det =
        kestrel_infer::model::Detector::load_with(rt, model, cfg.model.labels.as_deref(), &opts, &mut |s| step(s))?;
    let (dir, how) = match det.selection.engine.as_ref().map(|e| &e.state) {
        Some(EngineState::Built { dir, seconds }) => (dir.clone(), format!("built in {seconds:.1} s")),
        Some(EngineState::Cached { dir }) => (dir.clone(), "already cached (use --force to rebuild)".to_string()),
        _ => anyhow::bail!("the session runs on {}, not on TensorRT", det.selection.active),
    };
    step("timing 10 runs");
    let times = det.warm_up(10)?;
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let files = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(Result::ok).count())
        .unwrap_or(0);
    Ok(format!(
        "TensorRT engine for {}\n  {how}\n  cache: {} ({files} files)\n  key: {} = {}\n  inference: median {:.2} ms \
         (min {:.2}, max {:.2}) over 10 runs\n  total time {:.1} s",
        model.display(),
        dir.display(),
        key.id(),
        key.describe(),
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        t0.elapsed().as_secs_f64()
    ))
}
