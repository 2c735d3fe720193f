//! `kestrel subscribe --zenoh`: the messages of every daemon whose key prefix matches `--key`, over Zenoh
//! (docs/protocol.md, "Over Zenoh"). Each printed object has a `key` field (the daemon's prefix); text lines
//! start with it.
//!
//! On start it asks every daemon for its `hello` (a query on `<key>/hello`), so it knows their labels before
//! their first binary `detections`, and it subscribes to `<key>/*` and to the liveliness of `<key>/alive`
//! (with history: the daemons alive now are printed first). A daemon first heard of later is asked for its
//! `hello` then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zenoh::handlers::FifoChannelHandler;
use zenoh::sample::{Sample, SampleKind};
use zenoh::Wait;

use super::subscribe::{print_line, render, Rendered, SubscribeArgs};
use crate::exit::{Exit, Failure};
use kestrel_protocol::Message;

/// How long a `hello` query waits for replies.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one wait for a sample lasts before the stop flag and the idle time are looked at.
const POLL: Duration = Duration::from_millis(100);

/// `<key>/<suffix>` in Zenoh's canonical form (`a/**/*` becomes `a/*/**`).
fn key_with(key: &str, suffix: &str) -> Result<zenoh::key_expr::KeyExpr<'static>, Failure> {
    let k = format!("{key}/{suffix}");
    zenoh::key_expr::KeyExpr::autocanonize(k.clone()).map_err(|e| {
        Failure::new(
            Exit::Usage,
            anyhow::anyhow!("--key: {k:?} is not a key expression: {e}"),
        )
    })
}

fn setup(e: impl Into<anyhow::Error>) -> Failure {
    Failure::new(Exit::Setup, e)
}

fn session_config(a: &SubscribeArgs) -> Result<zenoh::Config, Failure> {
    let mut c = zenoh::Config::default();
    let mut set = |key: &str, value: serde_json::Value| {
        c.insert_json5(key, &value.to_string())
            .map_err(|e| Failure::new(Exit::Usage, anyhow::anyhow!("zenoh setting {key}: {e}")))
    };
    set("mode", "peer".into())?;
    set("connect/endpoints", a.connect.clone().into())?;
    if !a.listen.is_empty() {
        set("listen/endpoints", a.listen.clone().into())?;
    }
    set("connect/exit_on_failure", false.into())?;
    set(
        "connect/retry",
        serde_json::json!({"period_init_ms": 500, "period_max_ms": 500, "period_increase_factor": 1.0}),
    )?;
    // Explicit endpoints: only those (no multicast on the network).
    set(
        "scouting/multicast/enabled",
        (a.connect.is_empty() && a.listen.is_empty()).into(),
    )?;
    Ok(c)
}

/// `<prefix>/<name>` → (`prefix`, `name`).
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

struct Daemons {
    /// Labels from each daemon's `hello`, by prefix (binary detections carry only class ids).
    labels: HashMap<String, Vec<String>>,
}

impl Daemons {
    /// Decode one sample of `prefix`: JSON when it looks like JSON, else the binary payload.
    fn decode(&self, prefix: &str, payload: &[u8]) -> Result<Message, kestrel_protocol::ProtocolError> {
        if payload.first() == Some(&b'{') {
            kestrel_protocol::decode_json(payload)
        } else {
            let labels = self.labels.get(prefix).map_or(&[][..], Vec::as_slice);
            kestrel_protocol::decode_binary(payload, labels)
        }
    }

    /// Learn from a `hello`.
    fn hello(&mut self, prefix: &str, msg: &Message) {
        if let Message::Hello(h) = msg {
            self.labels.insert(prefix.to_string(), h.labels.clone());
        }
    }
}

pub fn run(a: &SubscribeArgs, stop: &AtomicBool) -> Result<Exit, Failure> {
    let key = a.key.trim_end_matches('/');
    let session = zenoh::open(session_config(a)?)
        .wait()
        .map_err(|e| setup(anyhow::anyhow!("Zenoh: {e}")))?;
    let alive = session
        .liveliness()
        .declare_subscriber(key_with(key, "alive")?)
        .history(true)
        .wait()
        .map_err(|e| setup(anyhow::anyhow!("Zenoh liveliness subscriber on {key}/alive: {e}")))?;
    let samples = session
        .declare_subscriber(key_with(key, "*")?)
        .wait()
        .map_err(|e| setup(anyhow::anyhow!("Zenoh subscriber on {key}/*: {e}")))?;
    let mut daemons = Daemons { labels: HashMap::new() };
    let mut undecodable = kestrel_core::ratelog::RateLimitedLog::new("kestrel subscribe: a Zenoh sample");
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let mut last = Instant::now();
    let timeout = Duration::from_millis(a.timeout_ms);
    let emit = |out: &mut std::io::StdoutLock<'_>, prefix: &str, msg: Message, seen: &mut u64| -> Option<bool> {
        match render(msg, a, seen) {
            Rendered::Print(line) => {
                let line = match line {
                    serde_json::Value::String(t) => serde_json::Value::String(format!("{prefix} | {t}")),
                    mut v => {
                        v["key"] = prefix.into();
                        v
                    }
                };
                Some(print_line(out, &line))
            }
            Rendered::Skip | Rendered::Refused(_) => None,
        }
    };
    // Every daemon's hello, now.
    for (prefix, msg) in query_hellos(&session, key_with(key, "hello")?)? {
        daemons.hello(&prefix, &msg);
        if emit(&mut out, &prefix, msg, &mut seen) == Some(false) {
            return Ok(Exit::Success);
        }
    }
    while !stop.load(Ordering::Relaxed) {
        while let Ok(Some(token)) = alive.try_recv() {
            let (prefix, _) = split_key(token.key_expr().as_str());
            let up = token.kind() == SampleKind::Put;
            let line = if a.text {
                serde_json::Value::String(format!("{prefix} | {}", if up { "alive" } else { "gone" }))
            } else {
                serde_json::json!({"type": "alive", "key": prefix, "alive": up})
            };
            if !a.detections_only && !print_line(&mut out, &line) {
                return Ok(Exit::Success);
            }
            last = Instant::now();
        }
        let sample = match next_sample(&samples) {
            Ok(Some(s)) => s,
            Ok(None) => {
                if last.elapsed() >= timeout {
                    return Err(Failure::new(
                        Exit::Failed,
                        anyhow::anyhow!("nothing on {key}/* over Zenoh for {} ms", a.timeout_ms),
                    ));
                }
                continue;
            }
            Err(e) => return Err(Failure::new(Exit::Failed, anyhow::anyhow!("Zenoh subscriber: {e}"))),
        };
        last = Instant::now();
        let (prefix, name) = split_key(sample.key_expr().as_str());
        let prefix = prefix.to_string();
        if name == "detections" && !daemons.labels.contains_key(&prefix) {
            // A daemon we have no hello of (it started after us, or its hello was lost): ask it.
            for (p, msg) in query_hellos(&session, key_with(&prefix, "hello")?)? {
                daemons.hello(&p, &msg);
                if emit(&mut out, &p, msg, &mut seen) == Some(false) {
                    return Ok(Exit::Success);
                }
            }
        }
        let payload = sample.payload().to_bytes();
        let msg = match daemons.decode(&prefix, &payload) {
            Ok(m) => m,
            Err(e) => {
                undecodable.warn(&format!("{}: cannot decode: {e}", sample.key_expr()));
                continue;
            }
        };
        daemons.hello(&prefix, &msg);
        if emit(&mut out, &prefix, msg, &mut seen) == Some(false) {
            return Ok(Exit::Success);
        }
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(Exit::Success)
}

fn next_sample(samples: &zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>) -> zenoh::Result<Option<Sample>> {
    samples.recv_timeout(POLL)
}

/// The `hello` replies to a query on `selector`, decoded, with their daemons' prefixes.
fn query_hellos(
    session: &zenoh::Session,
    selector: zenoh::key_expr::KeyExpr<'static>,
) -> Result<Vec<(String, Message)>, Failure> {
    let replies = session
        .get(selector.clone())
        .timeout(QUERY_TIMEOUT)
        .wait()
        .map_err(|e| setup(anyhow::anyhow!("Zenoh query {selector}: {e}")))?;
    let mut out = Vec::new();
    let deadline = Instant::now() + QUERY_TIMEOUT + Duration::from_millis(500);
    while let Ok(Some(reply)) = replies.recv_deadline(deadline) {
        let Ok(sample) = reply.result() else { continue };
        let (prefix, _) = split_key(sample.key_expr().as_str());
        let payload = sample.payload().to_bytes();
        let decoded = if payload.first() == Some(&b'{') {
            kestrel_protocol::decode_json(&payload)
        } else {
            kestrel_protocol::decode_binary(&payload, &[])
        };
        match decoded {
            Ok(m @ Message::Hello(_)) => out.push((prefix.to_string(), m)),
            Ok(_) => {}
            Err(e) => log::warn!("{}: cannot decode its hello: {e}", sample.key_expr()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_prefix_and_name() {
        assert_eq!(split_key("kestrel/d1/detections"), ("kestrel/d1", "detections"));
        assert_eq!(split_key("a/b/c/status"), ("a/b/c", "status"));
        assert_eq!(split_key("hello"), ("", "hello"));
    }
}
