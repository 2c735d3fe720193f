//! Exit codes, in one place, and how a failed command reaches one.
//!
//! systemd and scripts read the exit status: 78 (sysexits' `EX_CONFIG`) tells systemd not to restart a
//! daemon whose configuration is wrong (`RestartPreventExitStatus=78` in the unit); 3 means the command
//! could not start (runtime, model, labels, source, socket); 1 means it ran but some inputs or the pipeline
//! failed; 2 is a usage error (clap uses it too).

use std::process::ExitCode;

/// Every exit status `kestrel` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// The command ran, but some inputs failed (or the running pipeline did).
    Failed = 1,
    /// Bad command-line usage.
    Usage = 2,
    /// The command could not start: runtime, model, labels, source, socket.
    Setup = 3,
    /// Invalid configuration (sysexits `EX_CONFIG`).
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// A command's failure: the error, and the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit,
            error: error.into(),
        }
    }
}

impl From<kestrel_daemon::config::ConfigError> for Failure {
    fn from(e: kestrel_daemon::config::ConfigError) -> Self {
        Self::new(Exit::Config, e)
    }
}

/// `result.or_exit(Exit::Setup)?`: fail the command with that status.
pub trait OrExit<T> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(exit, e))
    }
}

/// The error and its causes on one line, each cause once: typed errors often already print their
/// source in their own message, and then it is not repeated.
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        let c = c.trim();
        if !text.contains(c) {
            text.push_str(": ");
            text.push_str(c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::other("disk on fire");
        let typed = kestrel_daemon::assemble::OutputError::Open {
            path: "/x".into(),
            source: io,
        };
        // The typed error's message already names its source: not repeated.
        assert_eq!(
            describe(&anyhow::Error::new(typed)),
            "cannot open output file /x: disk on fire"
        );
        let wrapped = anyhow::Error::new(std::io::Error::other("inner")).context("outer");
        assert_eq!(describe(&wrapped), "outer: inner");
    }

    #[test]
    fn exit_codes_are_what_systemd_and_scripts_expect() {
        assert_eq!(Exit::Config as u8, 78);
        assert_eq!(Exit::Setup as u8, 3);
        assert_eq!(Exit::Failed as u8, 1);
    }
}
