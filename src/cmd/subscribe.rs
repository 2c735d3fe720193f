//! `kestrel subscribe`: print a running daemon's messages, one JSON object (or text line) each; with
//! `--zenoh`, every daemon's messages over Zenoh, each tagged with its key prefix.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;

use crate::exit::{Exit, Failure};

#[derive(Args)]
pub struct SubscribeArgs {
    /// The daemon's socket.
    #[arg(long, value_name = "PATH", default_value = "/run/kestrel/detections.sock")]
    pub socket: PathBuf,
    /// Wire format to ask for (printed as JSON either way).
    #[arg(long, value_name = "json|binary", default_value = "json")]
    pub format: String,
    /// Only detections of this class (label); frames without one are not printed. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub class: Vec<String>,
    /// Exit after this many detections messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print only detections messages (no hello/status).
    #[arg(long)]
    pub detections_only: bool,
    /// One human-readable line per message instead of JSON.
    #[arg(long)]
    pub text: bool,
    /// Give up when nothing (not even a status) arrives for this long.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Read the daemons' Zenoh output instead of a socket: `hello` of every daemon by query, then their
    /// detections and status, and their liveliness (`{"type":"alive",…}` as each appears or goes).
    #[arg(long)]
    pub zenoh: bool,
    /// With --zenoh: an endpoint to connect to, e.g. tcp/192.168.1.20:7447 (repeatable). Without --connect or
    /// --listen, peers are found by multicast scouting.
    #[arg(long, value_name = "ENDPOINT", requires = "zenoh")]
    pub connect: Vec<String>,
    /// With --zenoh: an endpoint to listen on, e.g. tcp/0.0.0.0:7447 (repeatable), for daemons that connect here.
    #[arg(long, value_name = "ENDPOINT", requires = "zenoh")]
    pub listen: Vec<String>,
    /// With --zenoh: the daemons' key prefixes, a key expression (`kestrel/**`: all of them; `kestrel/d1`: one).
    #[arg(long, value_name = "KEYEXPR", default_value = "kestrel/**", requires = "zenoh")]
    pub key: String,
}

/// What to do with one received message.
pub(crate) enum Rendered {
    Print(serde_json::Value),
    Skip,
    /// The daemon refused the connection (socket only).
    Refused(String),
}

/// The printed form of `msg` (`seen` counts the detections messages printed, for `--count`).
pub(crate) fn render(msg: kestrel_protocol::Message, a: &SubscribeArgs, seen: &mut u64) -> Rendered {
    use kestrel_protocol::Message;
    Rendered::Print(match msg {
        Message::Detections(mut d) => {
            if !a.class.is_empty() {
                d.detections.retain(|x| a.class.contains(&x.label));
                if d.detections.is_empty() {
                    return Rendered::Skip;
                }
            }
            *seen += 1;
            if a.text {
                let dets: Vec<String> = d
                    .detections
                    .iter()
                    .take(8)
                    .map(|x| match (x.angle_x, x.angle_y) {
                        (Some(ax), Some(ay)) => format!("{} {:.2} ({:+.3},{:+.3} rad)", x.label, x.score, ax, ay),
                        _ => format!("{} {:.2}", x.label, x.score),
                    })
                    .collect();
                let dets = if dets.is_empty() {
                    "-".to_string()
                } else {
                    dets.join(" ")
                };
                serde_json::Value::String(format!("frame {:>6} | {:6.1} ms | {dets}", d.seq, d.latency_ms))
            } else {
                let mut v = serde_json::to_value(&d).unwrap_or_default();
                v["type"] = "detections".into();
                v
            }
        }
        Message::Status(st) if a.text => serde_json::Value::String(format!(
            "status {:?} {} | in {:.1} fps, out {:.1} fps, p50 {:.1} ms",
            st.health, st.reason, st.fps_in, st.fps_out, st.latency_ms.p50
        )),
        _ if a.detections_only => return Rendered::Skip,
        Message::Hello(h) => with_type("hello", &*h),
        Message::Status(s) => with_type("status", &*s),
        Message::Missed { count } => serde_json::json!({"type": "missed", "count": count}),
        Message::Error { error } => return Rendered::Refused(error),
        Message::FormatSwitch { format } => serde_json::json!({"type": "format", "format": format}),
        Message::Unknown { kind } => serde_json::json!({"type": kind}),
    })
}

/// Print one line (a JSON object, or the text of a string); false when stdout is closed.
pub(crate) fn print_line(out: &mut impl std::io::Write, line: &serde_json::Value) -> bool {
    let written = match line {
        serde_json::Value::String(t) => writeln!(out, "{t}"),
        v => writeln!(out, "{v}"),
    };
    written.and_then(|_| out.flush()).is_ok()
}

pub fn run(a: &SubscribeArgs) -> Result<Exit, Failure> {
    use kestrel_protocol::client::{ClientError, Subscriber};
    use kestrel_protocol::Format;
    let format = match a.format.as_str() {
        "json" => Format::Json,
        "binary" => Format::Binary,
        other => {
            return Err(Failure::new(
                Exit::Usage,
                anyhow::anyhow!("--format {other}: expected json or binary"),
            ))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    if a.zenoh {
        #[cfg(feature = "zenoh")]
        return super::subscribe_zenoh::run(a, &stop);
        #[cfg(not(feature = "zenoh"))]
        return Err(Failure::new(
            Exit::Usage,
            anyhow::anyhow!("--zenoh: this kestrel was built without Zenoh (cargo feature `zenoh`)"),
        ));
    }
    let mut sub = Subscriber::connect(&a.socket, format).map_err(|e| Failure::new(Exit::Setup, e))?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let timeout = std::time::Duration::from_millis(a.timeout_ms);
    let mut idle = std::time::Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let msg = match sub.next(std::time::Duration::from_millis(200)) {
            Ok(Some(m)) => {
                idle = std::time::Duration::ZERO;
                m
            }
            Ok(None) => {
                idle += std::time::Duration::from_millis(200);
                if idle >= timeout {
                    return Err(Failure::new(
                        Exit::Failed,
                        anyhow::anyhow!("nothing from {} for {} ms", a.socket.display(), a.timeout_ms),
                    ));
                }
                continue;
            }
            Err(ClientError::Closed) => {
                report!("kestrel: the daemon closed the connection");
                return Ok(Exit::Success);
            }
            Err(e) => return Err(Failure::new(Exit::Failed, e)),
        };
        let line = match render(msg, a, &mut seen) {
            Rendered::Print(line) => line,
            Rendered::Skip => continue,
            Rendered::Refused(error) => {
                report!("kestrel: the daemon refused: {error}");
                return Ok(Exit::Failed);
            }
        };
        if !print_line(&mut out, &line) {
            return Ok(Exit::Success); // stdout closed (e.g. piped into head)
        }
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(Exit::Success)
}

fn with_type<T: serde::Serialize>(kind: &str, v: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    v["type"] = kind.into();
    v
}
