//! `kestrel`: parse the command line, run one command, map its outcome to an exit status. Each command is
//! a module of [`cmd`]; the exit statuses are [`exit::Exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `eprintln!` that never panics (stderr may be a closed pipe).
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cmd;
mod exit;
mod logging;

use exit::{Exit, Failure};

#[derive(Parser)]
#[command(name = "kestrel", version, about = "On-device YOLO object detection for drones")]
struct Cli {
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, beside the executable, the project cache, Python onnxruntime).
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `warn,kestrel=debug` (also RUST_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect objects in image files (JPEG, PNG); prints one JSON object per image.
    Detect(cmd::detect::DetectArgs),
    /// Run the streaming detector (the daemon) as configured.
    Run(cmd::run::RunArgs),
    /// Validate a configuration file without running.
    CheckConfig(cmd::ConfigArgs),
    /// Measure bare inference, preprocessing and the full pipeline, interleaved.
    Bench(cmd::bench::BenchArgs),
    /// List V4L2 cameras with their pixel formats, sizes and frame rates.
    Devices(cmd::devices::DevicesArgs),
    /// Connect to a running daemon's detection socket and print its messages (one JSON object per line).
    Subscribe(cmd::subscribe::SubscribeArgs),
    /// Make the FP32 reference ("golden") detections of a model on a few images, for the start-up self-test:
    /// CPU execution provider, FP32 model; written beside the model as <stem>.golden.json.
    Golden(cmd::golden::GoldenArgs),
    /// Build and cache the TensorRT engine for a config's model ahead of flight, with progress and a summary.
    BuildEngine(cmd::build_engine::BuildEngineArgs),
    /// Make a trained detector lighter: Tucker-2 decomposition of the convolutions that lose little, ranks
    /// chosen by search under an error bound, kept only where the device runs them faster.
    Compress(Box<cmd::compress::CompressArgs>),
    /// Detection fidelity of a model against a reference model or labels: COCO mAP, matched IoU, score drift.
    Evaluate(cmd::evaluate::EvaluateArgs),
}

/// Run the command the user asked for.
fn run(cli: &Cli) -> Result<Exit, Failure> {
    let ort = cli.ort_lib.as_deref();
    if !matches!(cli.command, Command::Run(_)) {
        logging::init(cli.log.as_deref(), None);
    }
    match &cli.command {
        Command::Detect(a) => cmd::detect::run(ort, a),
        Command::Run(a) => cmd::run::run(ort, cli.log.as_deref(), a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Bench(a) => cmd::bench::run(ort, a),
        Command::Devices(a) => cmd::devices::run(a),
        Command::Subscribe(a) => cmd::subscribe::run(a),
        Command::Golden(a) => cmd::golden::run(ort, a),
        Command::BuildEngine(a) => cmd::build_engine::run(ort, a),
        Command::Compress(a) => cmd::compress::run(ort, a),
        Command::Evaluate(a) => cmd::evaluate::run(ort, a),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(exit) => exit.into(),
        Err(Failure { exit, error }) => {
            report!("kestrel: error: {}", exit::describe(&error));
            exit.into()
        }
    }
}
