//! A client for the detection socket, for Rust users (and `kestrel subscribe`):
//!
//! ```no_run
//! use kestrel_protocol::client::Subscriber;
//! use kestrel_protocol::Message;
//! use kestrel_protocol::Format;
//! let mut sub = Subscriber::connect("/run/kestrel/detections.sock", Format::Binary)?;
//! while let Some(msg) = sub.next(std::time::Duration::from_secs(2))? {
//!     if let Message::Detections(d) = msg {
//!         for det in &d.detections {
//!             println!("{} {:.2} {:?} {:?}", det.label, det.score, det.bbox, det.angle_x);
//!         }
//!     }
//! }
//! # Ok::<(), kestrel_protocol::client::ClientError>(())
//! ```
//!
//! `next` returns `Ok(None)` on a timeout (no message, not even a `status`, for that long: the daemon is
//! stuck or gone) and `Err(Closed)` when the server closed the connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{self as protocol, Format, Message, ProtocolError};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the server closed the connection")]
    Closed,
}

pub struct Subscriber {
    stream: UnixStream,
    /// The framing of what arrives next; `None` until the first bytes say (a server may default to binary).
    format: Option<Format>,
    buf: Vec<u8>,
    labels: Vec<String>,
}

impl Subscriber {
    /// Connect; with `Format::Binary` ask the server to switch this connection to the binary framing.
    pub fn connect(path: impl AsRef<Path>, format: Format) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let mut s = Self {
            stream,
            format: None,
            buf: Vec::with_capacity(1 << 16),
            labels: Vec::new(),
        };
        if format == Format::Binary {
            s.stream.write_all(b"{\"format\":\"binary\"}\n")?;
        }
        Ok(s)
    }

    /// The labels from the last `hello` (used to name classes in binary messages).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The next message, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Message>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.parse_one()? {
                match &m {
                    Message::Hello(h) => self.labels = h.labels.clone(),
                    Message::FormatSwitch { format } => self.format = Some(*format),
                    _ => {}
                }
                return Ok(Some(m));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn parse_one(&mut self) -> Result<Option<Message>, ClientError> {
        if self.format.is_none() {
            // Every JSON message starts with `{"type"`; a binary frame cannot start with `{"ty` (that length
            // would be ~2 GB, beyond the protocol's 4 MiB limit).
            if self.buf.len() < 4 {
                return Ok(None);
            }
            self.format = Some(if self.buf.starts_with(b"{\"ty") {
                Format::Json
            } else {
                Format::Binary
            });
        }
        match self.format.unwrap_or_default() {
            Format::Json => {
                let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
                    return Ok(None);
                };
                let m = protocol::decode_json(&self.buf[..nl]);
                self.buf.drain(..=nl);
                Ok(Some(m?))
            }
            Format::Binary => {
                let Some((range, used)) = protocol::next_binary_frame(&self.buf)? else {
                    return Ok(None);
                };
                let m = protocol::decode_binary(&self.buf[range], &self.labels);
                self.buf.drain(..used);
                Ok(Some(m?))
            }
        }
    }
}
