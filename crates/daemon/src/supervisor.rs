//! The daemon's supervisor: it owns the process-wide concerns the pipeline must not know about — signals
//! (SIGTERM/SIGINT stop, SIGHUP reloads), systemd notifications and watchdog ticks, an optional frame limit,
//! and the stop order (pipeline first, then the socket server, so subscribers see every published frame).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::assemble::{self, Daemon, Reload, StartError};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{PipelineError, Summary};
use crate::service::Notifier;

/// Why supervision ended with an error.
#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error("cannot install signal handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the frame-limit thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// What the supervisor runs besides the configuration.
pub struct Options<'a> {
    /// `--ort-lib`.
    pub ort_lib: Option<&'a Path>,
    /// Stop after this many published frames.
    pub max_frames: Option<u64>,
    /// Shown in reload log lines.
    pub config_path: &'a Path,
    /// Reads the configuration again on SIGHUP (the file plus whatever overrides started the daemon).
    pub reload: &'a mut dyn FnMut() -> Result<Config, ConfigError>,
}

/// Run the daemon `cfg` describes until a stop signal, the frame limit or the end of the source.
pub fn run(cfg: &Config, opts: Options<'_>) -> Result<Summary, SupervisorError> {
    let stop = Arc::new(AtomicBool::new(false));
    let reload_requested = Arc::new(AtomicBool::new(false));
    let handlers = [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &reload_requested),
    ];
    for (sig, flag) in handlers {
        signal_hook::flag::register(sig, flag.clone()).map_err(SupervisorError::Signals)?;
    }
    let mut notifier = Notifier::from_env(&cfg.service);
    let daemon = match assemble::start(cfg, opts.ort_lib, stop.clone(), &mut |s| notifier.status(s)) {
        Ok(d) => d,
        Err(e) => {
            notifier.status(&format!("failed: {e}"));
            return Err(e.into());
        }
    };
    let Daemon {
        pipeline,
        publisher,
        mut reload,
        source_name,
    } = daemon;
    notifier.set_source_name(&source_name);
    let limit = match opts.max_frames {
        Some(n) => Some(FrameLimit::start(n, pipeline.metrics.clone(), stop.clone())?),
        None => None,
    };
    let every = (cfg.metrics.log_interval_ms > 0).then(|| Duration::from_millis(cfg.metrics.log_interval_ms));
    let metrics = pipeline.metrics.clone();
    let mut stopping = false;
    let reload_config = opts.reload;
    let result = pipeline.wait_with(every, &mut || {
        if stop.load(Ordering::Relaxed) {
            if !stopping {
                stopping = true;
                notifier.stopping("stopping");
            }
            return;
        }
        if reload_requested.swap(false, Ordering::SeqCst) {
            apply_reload(opts.config_path, reload_config, &mut reload, &mut notifier);
        }
        notifier.tick(&metrics);
    });
    if !stopping {
        notifier.stopping("stopping: the pipeline ended");
    }
    // After the pipeline: subscribers see every published frame; removes the socket file.
    drop(publisher);
    if let Some(limit) = limit {
        limit.join();
    }
    let summary = result?;
    log::info!(
        "stopped after {:.1} s ({}): {}",
        summary.elapsed.as_secs_f64(),
        if summary.stopped {
            "stop requested"
        } else {
            "source ended"
        },
        metrics.snapshot()
    );
    Ok(summary)
}

/// SIGHUP: read the file again; apply the thresholds and output settings, or reject the file and keep
/// running as before. Never fatal.
fn apply_reload(
    path: &Path,
    read: &mut dyn FnMut() -> Result<Config, ConfigError>,
    reload: &mut Reload,
    notifier: &mut Notifier,
) {
    notifier.reloading();
    let outcome: Result<_, Box<dyn std::error::Error>> = match read() {
        Ok(new) => reload.apply(new).map_err(Into::into),
        Err(e) => Err(e.into()),
    };
    let text = match outcome {
        Ok(changes) if changes.is_empty() => {
            log::info!(
                "reload of {}: nothing that can change at run time changed",
                path.display()
            );
            "running; reloaded (no change)".to_string()
        }
        Ok(changes) => {
            log::info!("reload of {}: {}", path.display(), changes.join("; "));
            format!("running; reloaded: {}", changes.join("; "))
        }
        Err(e) => {
            log::error!("reload rejected, keeping the running configuration: {e}");
            "running; last reload rejected (see the log)".to_string()
        }
    };
    notifier.reloaded(&text);
}

/// `--max-frames`: a named thread that requests a stop once enough frames were published.
struct FrameLimit {
    done: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl FrameLimit {
    fn start(n: u64, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) -> Result<Self, SupervisorError> {
        let done = Arc::new(AtomicBool::new(false));
        let quit = done.clone();
        let thread = std::thread::Builder::new()
            .name("frame-limit".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) && !quit.load(Ordering::Relaxed) && metrics.published_total() < n {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if metrics.published_total() >= n {
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .map_err(SupervisorError::Thread)?;
        Ok(Self { done, thread })
    }

    /// Ends the thread (within one 5 ms poll) and waits for it.
    fn join(self) {
        self.done.store(true, Ordering::SeqCst);
        if self.thread.join().is_err() {
            log::error!("the frame-limit thread panicked");
        }
    }
}
