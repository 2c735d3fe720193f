//! `kestrel run`: the daemon.

use std::path::PathBuf;

use clap::Args;
use kestrel_daemon::config::{Config, ConfigError, OutputFormat, SourceKind};
use kestrel_daemon::supervisor::{self, SupervisorError};

use super::{unit_interval, ConfigArgs};
use crate::exit::{Exit, Failure};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Override source.path (an .mjpeg file, an image file or a directory of images; the kind follows).
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,
    /// Serve detections on this socket (sets publish.enabled and publish.socket).
    #[arg(long, value_name = "PATH", conflicts_with = "no_socket")]
    pub socket: Option<PathBuf>,
    /// No detection socket (publish.enabled = false).
    #[arg(long)]
    pub no_socket: bool,
    /// Use this V4L2 camera (sets source.kind = "v4l2" and source.device).
    #[arg(long, value_name = "PATH", conflicts_with = "source")]
    pub device: Option<PathBuf>,
    /// Override source.fps_hz (0: as fast as possible).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Override model.path (.onnx, or a .onnx.zst package with its .sha256 beside it).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Override model.conf.
    #[arg(long, value_parser = unit_interval)]
    pub conf: Option<f32>,
    /// Override output.format.
    #[arg(long, value_parser = ["json", "text"])]
    pub format: Option<String>,
    /// Stop after this many published frames.
    #[arg(long, value_name = "N")]
    pub max_frames: Option<u64>,
}

/// The run configuration: the file, then the command-line overrides (which also win on every reload).
fn run_config(a: &RunArgs) -> Result<Config, ConfigError> {
    let mut cfg = Config::load(&a.config.config)?;
    if let Some(p) = &a.source {
        cfg.source.kind = if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mjpeg") || e.eq_ignore_ascii_case("mjpg"))
        {
            SourceKind::Mjpeg
        } else {
            SourceKind::Images
        };
        cfg.source.path = p.clone();
    }
    if let Some(p) = &a.socket {
        cfg.publish.enabled = true;
        cfg.publish.socket = p.clone();
    }
    if a.no_socket {
        cfg.publish.enabled = false;
    }
    if let Some(d) = &a.device {
        cfg.source.kind = SourceKind::V4l2;
        cfg.source.device = d.clone();
    }
    if let Some(f) = a.fps {
        cfg.source.fps_hz = f;
    }
    if let Some(m) = &a.model {
        cfg.model.path = m.clone();
    }
    if let Some(c) = a.conf {
        cfg.model.conf = c;
    }
    match a.format.as_deref() {
        Some("text") => cfg.output.format = OutputFormat::Text,
        Some(_) => cfg.output.format = OutputFormat::Json,
        None => {}
    }
    cfg.validate(&a.config.config)?;
    Ok(cfg)
}

/// Run the daemon until it is stopped or its source ends.
pub fn run(cli_ort: Option<&std::path::Path>, cli_log: Option<&str>, a: &RunArgs) -> Result<Exit, Failure> {
    let cfg = match run_config(a) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::init(cli_log, None);
            return Err(e.into());
        }
    };
    crate::logging::init(cli_log, cfg.log.filter.as_deref());
    let mut reload = || run_config(a);
    let opts = supervisor::Options {
        ort_lib: cli_ort,
        max_frames: a.max_frames,
        config_path: &a.config.config,
        reload: &mut reload,
    };
    match supervisor::run(&cfg, opts) {
        Ok(_) => Ok(Exit::Success),
        Err(e @ (SupervisorError::Signals(_) | SupervisorError::Thread(_) | SupervisorError::Start(_))) => {
            Err(Failure::new(Exit::Setup, e))
        }
        Err(e @ SupervisorError::Pipeline(_)) => Err(Failure::new(Exit::Failed, e)),
    }
}
