//! One module per command; what several share is here.

pub mod bench;
pub mod build_engine;
pub mod check_config;
pub mod compress;
pub mod detect;
pub mod devices;
pub mod evaluate;
pub mod golden;
pub mod run;
pub mod subscribe;
#[cfg(feature = "zenoh")]
pub mod subscribe_zenoh;

use std::path::{Path, PathBuf};

use clap::Args;
use kestrel_infer::ep::EpKind;

pub const DEFAULT_MODEL: &str = "models/yolov3-tiny-416.onnx";

#[derive(Args)]
pub struct ConfigArgs {
    /// Configuration file.
    #[arg(long, short, value_name = "PATH", default_value = kestrel_daemon::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// clap value parser: a number in `0..=1` (clap reports the message as a usage error).
pub fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

/// `--ep` and `--require-ep` values, as clap lists them in `--help` and in its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ep {
    Tensorrt,
    Cuda,
    Cpu,
}

impl From<Ep> for EpKind {
    fn from(e: Ep) -> Self {
        match e {
            Ep::Tensorrt => EpKind::Tensorrt,
            Ep::Cuda => EpKind::Cuda,
            Ep::Cpu => EpKind::Cpu,
        }
    }
}

/// The default model path is relative to the project; also look beside the executable's ancestors so
/// `target/release/kestrel` works from any directory.
pub fn resolve_model_path(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() || p != Path::new(DEFAULT_MODEL) {
        return p.to_path_buf();
    }
    let exe = std::env::current_exe().ok();
    exe.as_deref()
        .and_then(Path::parent)
        .into_iter()
        .flat_map(|d| d.ancestors().take(4))
        .map(|d| d.join(p))
        .find(|c| c.exists())
        .unwrap_or_else(|| p.to_path_buf())
}
