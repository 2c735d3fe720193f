//! `kestrel devices`: list V4L2 cameras.

use std::path::PathBuf;

use clap::Args;

use crate::exit::{Exit, Failure};

#[derive(Args)]
pub struct DevicesArgs {
    /// Only these nodes (default: every /dev/video*).
    #[arg(value_name = "DEVICE")]
    pub devices: Vec<PathBuf>,
    /// One JSON array instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &DevicesArgs) -> Result<Exit, Failure> {
    use kestrel_camera::v4l2::devices;
    let list: Vec<_> = if a.devices.is_empty() {
        devices::list()
    } else {
        a.devices.iter().map(|d| devices::describe(d)).collect()
    };
    let out = if a.json {
        serde_json::to_string_pretty(&list).map_err(|e| Failure::new(Exit::Failed, e))? + "\n"
    } else {
        devices::render(&list)
    };
    if std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes()).is_err() {
        return Ok(Exit::Failed);
    }
    // Named devices that could not be queried are an error; an empty machine is not.
    if !a.devices.is_empty() && list.iter().any(|d| d.error.is_some()) {
        return Ok(Exit::Failed);
    }
    Ok(Exit::Success)
}
