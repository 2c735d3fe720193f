//! The logger: `--log`, else `RUST_LOG`, else the config's `log.filter`, else `warn,kestrel=info`. Under
//! systemd (stderr is the journal) lines carry `<priority>` prefixes and no timestamps.

use std::io::Write as _;

/// True when stderr is connected to the journal: systemd sets JOURNAL_STREAM to "<device>:<inode>" of the
/// stream it gave us (a redirected stderr under systemd does not match and gets the normal format).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Set up the logger (once; later calls do nothing).
pub fn init(cli_filter: Option<&str>, config_filter: Option<&str>) {
    let filter = cli_filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
        .or_else(|| config_filter.map(str::to_string))
        .unwrap_or_else(|| "warn,kestrel=info".into());
    let mut logger = env_logger::Builder::new();
    logger.parse_filters(&filter);
    if stderr_is_journal() {
        // journald stamps and ranks lines itself: "<priority>" prefixes (sd-daemon(3)), no timestamps.
        logger.format(|buf, r| {
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            // One journal entry per line: every line of a multi-line message keeps the priority.
            let text = r.args().to_string();
            for line in text.lines() {
                writeln!(buf, "<{prio}>{}: {line}", r.target())?;
            }
            Ok(())
        });
    } else {
        logger.format_timestamp_millis();
    }
    let _ = logger.try_init();
}
