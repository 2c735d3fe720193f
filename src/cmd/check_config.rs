//! `kestrel check-config`: validate a configuration file without running.

use std::io::Write as _;

use kestrel_daemon::config::{Config, SourceKind};

use super::ConfigArgs;
use crate::exit::{Exit, Failure};

pub fn run(a: &ConfigArgs) -> Result<Exit, Failure> {
    let cfg = Config::load(&a.config)?;
    let mut problems = Vec::new();
    if !cfg.model.path.is_file() {
        problems.push(("model.path", format!("{} does not exist", cfg.model.path.display())));
    } else if kestrel_infer::package::is_package(&cfg.model.path) {
        let sidecar = kestrel_infer::package::sidecar_path(&cfg.model.path);
        if !sidecar.is_file() {
            problems.push((
                "model.path",
                format!(
                    "{} is a model package, and its checksum file {} does not exist",
                    cfg.model.path.display(),
                    sidecar.display()
                ),
            ));
        }
    }
    match cfg.source.kind {
        SourceKind::Images | SourceKind::Mjpeg if !cfg.source.path.exists() => {
            problems.push(("source.path", format!("{} does not exist", cfg.source.path.display())));
        }
        SourceKind::V4l2 if !cfg.source.device.exists() => {
            // Not an error: the daemon waits for the camera. Worth saying, though.
            report!(
                "kestrel: note: config {}: source.device {} is not present now (the daemon waits for it)",
                a.config.display(),
                cfg.source.device.display()
            );
        }
        _ => {}
    }
    if problems.is_empty() {
        let _ = writeln!(std::io::stdout(), "{}: OK", a.config.display());
        Ok(Exit::Success)
    } else {
        for (field, why) in problems {
            report!("kestrel: error: config {}: field `{field}`: {why}", a.config.display());
        }
        Ok(Exit::Config)
    }
}
