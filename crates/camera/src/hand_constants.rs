//! A guard, run as a unit test: kernel numbers (errno values, ioctl requests, V4L2 flags and enum values,
//! mmap/poll flags) come from the bindings (`v4l::v4l_sys`, `v4l::v4l2::vidioc`) and `rustix`, never from
//! copies. A copy compiles and works until the architecture or kernel where it is wrong. The test scans
//! every crate's sources for the shapes such copies take.

use std::path::{Path, PathBuf};

/// errno names, as they appear in a hand-written table or its comments.
const ERRNO_NAMES: &str = "EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG EBADF EAGAIN EWOULDBLOCK ENOMEM EACCES \
    EFAULT EBUSY EEXIST ENODEV ENOTDIR EISDIR EINVAL ENFILE EMFILE ENOTTY ENOSPC ESPIPE EROFS EPIPE ERANGE \
    ENOSYS ENODATA ETIME EPROTO EOVERFLOW ENOTSUP EOPNOTSUPP EADDRINUSE ECONNABORTED ECONNRESET ECONNREFUSED \
    ENOTCONN ETIMEDOUT EHOSTUNREACH EINPROGRESS EALREADY ECANCELED ENOBUFS EMSGSIZE";

fn is_errno_name(name: &str) -> bool {
    ERRNO_NAMES.split_whitespace().any(|e| e == name)
}

/// Prefixes of the kernel's own names for V4L2, mmap, poll and open(2) numbers.
const KERNEL_PREFIXES: &str = "V4L2_ VIDIOC_ CAP_ BUF_ MEMORY_ FIELD_ PIX_FMT_ COLORSPACE_ YCBCR_ENC_ \
    QUANTIZATION_ MAP_ PROT_ POLLIN POLLOUT POLLPRI POLLERR POLLHUP O_";

const INT_TYPES: &[&str] = &[
    "i8", "i16", "i32", "i64", "isize", "u8", "u16", "u32", "u64", "usize", "c_int", "c_uint", "c_long", "c_ulong",
    "c_short", "c_ushort",
];

/// Each line of a Rust source as (code, comment), with the contents of string literals blanked out of the
/// code (so a pattern quoted in a string, like the samples below, is not code). Char literals are kept.
fn code_and_comments(src: &str) -> Vec<(String, String)> {
    enum St {
        Code,
        Line,
        Block(u32),
        Str,
        Raw(usize),
    }
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut lines = vec![(String::new(), String::new())];
    let mut st = St::Code;
    let mut i = 0;
    while i < c.len() {
        let (ch, next) = (c[i], at(i + 1));
        if ch == '\n' {
            if let St::Line = st {
                st = St::Code;
            }
            lines.push((String::new(), String::new()));
            i += 1;
            continue;
        }
        let (code, comment) = lines.last_mut().unwrap();
        match st {
            St::Code => {
                let prev = if i > 0 { at(i - 1) } else { ' ' };
                // r"…", r#"…"#, br"…" (not the `r` ending an identifier)
                let raw_start = ch == 'r'
                    && (!ident(prev) || (prev == 'b' && (i < 2 || !ident(at(i - 2)))))
                    && (next == '"' || next == '#');
                let hashes = if raw_start {
                    c[i + 1..].iter().take_while(|&&h| h == '#').count()
                } else {
                    0
                };
                if ch == '/' && next == '/' {
                    st = St::Line;
                    i += 2;
                } else if ch == '/' && next == '*' {
                    st = St::Block(1);
                    i += 2;
                } else if raw_start && at(i + 1 + hashes) == '"' {
                    code.push_str("r\"");
                    st = St::Raw(hashes);
                    i += 2 + hashes;
                } else if ch == '"' {
                    code.push('"');
                    st = St::Str;
                    i += 1;
                } else if ch == '\'' && (next == '\\' || at(i + 2) == '\'') {
                    // a char literal ('V', '"', '\n', '\u{…}'), kept whole; otherwise a lifetime
                    let from = if next == '\\' { i + 3 } else { i + 2 };
                    let end = (from..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len() - 1);
                    code.extend(&c[i..=end]);
                    i = end + 1;
                } else {
                    code.push(ch);
                    i += 1;
                }
            }
            St::Line => {
                comment.push(ch);
                i += 1;
            }
            St::Block(depth) => {
                if ch == '*' && next == '/' {
                    st = if depth == 1 { St::Code } else { St::Block(depth - 1) };
                    i += 2;
                } else if ch == '/' && next == '*' {
                    st = St::Block(depth + 1);
                    i += 2;
                } else {
                    comment.push(ch);
                    i += 1;
                }
            }
            St::Str => {
                if ch == '\\' && next != '\n' {
                    code.push_str("  ");
                    i += 2;
                } else if ch == '"' {
                    code.push('"');
                    st = St::Code;
                    i += 1;
                } else {
                    code.push(' ');
                    i += 1;
                }
            }
            St::Raw(n) => {
                if ch == '"' && (1..=n).all(|k| at(i + k) == '#') {
                    code.push('"');
                    st = St::Code;
                    i += 1 + n;
                } else {
                    code.push(' ');
                    i += 1;
                }
            }
        }
    }
    lines
}

/// Identifiers, numbers (with their `_` and suffixes) and punctuation (`::`, `==`, `!=` as one token).
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if !c[i].is_whitespace() {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["::", "==", "!="].contains(&two.as_str()) {
                out.push(two);
                i += 2;
            } else {
                out.push(c[i].to_string());
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The value of an integer literal token (`0x8000_0000`, `19`, `0x01i32`), if it is one.
fn int_value(t: &str) -> Option<u64> {
    if !t.starts_with(|ch: char| ch.is_ascii_digit()) {
        return None;
    }
    let t = t.replace('_', "");
    let t = INT_TYPES.iter().find_map(|s| t.strip_suffix(s)).unwrap_or(&t);
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// A V4L2 ioctl request number: `_IOR`/`_IOW`/`_IOWR` (direction bits 30–31, argument size in bits 16–29)
/// of type `'V'` (bits 8–15).
fn is_v4l2_ioctl(v: u64) -> bool {
    v <= u64::from(u32::MAX) && v >> 30 != 0 && (v >> 16) & 0x3fff != 0 && (v >> 8) & 0xff == u64::from(b'V')
}

/// The lines of `src` (1-based) that look like kernel numbers written by hand, and why.
fn hand_constants(src: &str) -> Vec<(usize, String)> {
    let mentions_v4l = src.contains("v4l");
    let uses_raw_errors = src.contains("raw_os_error");
    let mut found = Vec::new();
    let mut depth = 0i64;
    // brace depth at which a `match` on a raw OS error started (its arms are checked for numbers)
    let mut errno_match: Option<i64> = None;
    for (n, (code, comment)) in code_and_comments(src).iter().enumerate() {
        let t = tokens(code);
        let mut why = |w: String| found.push((n + 1, w));
        let has = |s: &str| t.iter().any(|x| x == s);
        let int_after = |k: usize| t.get(k).and_then(|x| int_value(x)).is_some();
        // `const NAME: <integer type>` with a kernel name
        for (k, x) in t.iter().enumerate() {
            if (x == "const" || x == "static") && t.get(k + 2).is_some_and(|x| x == ":") {
                let name = &t[k + 1];
                let ty: Vec<&String> = t[k + 3..].iter().take_while(|x| *x != "=").collect();
                let int_ty = ty.iter().any(|x| INT_TYPES.contains(&x.as_str()));
                let errno_like = is_errno_name(name)
                    || (name.len() > 2
                        && name.starts_with('E')
                        && name[1..].chars().all(|ch| ch.is_ascii_uppercase())
                        && ty.iter().any(|x| *x == "i32" || *x == "c_int"));
                let kernel = KERNEL_PREFIXES.split_whitespace().any(|p| name.starts_with(p));
                // `[i32; N]` where OS errors are looked at: a table of errno numbers
                let errno_table = ty.first().is_some_and(|x| *x == "[")
                    && ty.iter().any(|x| *x == "i32" || *x == "c_int")
                    && uses_raw_errors;
                if int_ty && (errno_like || kernel) {
                    why(format!("`{name}` copies a kernel constant"));
                } else if errno_table {
                    why(format!("`{name}` is a table of errno numbers"));
                }
            }
        }
        // raw OS errors compared with numbers
        if has("raw_os_error") {
            for (k, x) in t.iter().enumerate() {
                if (x == "Some" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2))
                    || ((x == "==" || x == "!=") && int_after(k + 1))
                {
                    why("a raw OS error compared with a number".into());
                    break;
                }
            }
            if has("match") && errno_match.is_none() {
                errno_match = Some(depth);
            }
        } else if errno_match.is_some() {
            for (k, x) in t.iter().enumerate() {
                if x == "Some" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2) {
                    why("a match arm on a raw OS error with a number".into());
                    break;
                }
            }
        }
        for (k, x) in t.iter().enumerate() {
            if x == "from_raw_os_error" && t.get(k + 1).is_some_and(|x| x == "(") && int_after(k + 2) {
                why("an OS error made from a number".into());
            }
        }
        // ioctl request numbers, literal or built from 'V'
        if t.iter().filter_map(|x| int_value(x)).any(is_v4l2_ioctl) {
            why("a V4L2 ioctl request number".into());
        }
        if t.iter().any(|x| x.starts_with("_IO")) && code.contains("'V'") {
            why("a V4L2 ioctl request built by hand".into());
        }
        if t.windows(2).any(|w| w[0] == "libc" && w[1] == "::") {
            why("libc (use rustix)".into());
        }
        // numbers stored into (or tested against) V4L2 struct fields
        if mentions_v4l {
            let fields = [
                "type_",
                "memory",
                "field",
                "pixelformat",
                "capabilities",
                "device_caps",
                "flags",
            ];
            for (k, x) in t.iter().enumerate() {
                let op = t
                    .get(k + 1)
                    .is_some_and(|x| ["=", ":", "&", "==", "!="].contains(&x.as_str()));
                let nonzero = t.get(k + 2).and_then(|x| int_value(x)).is_some_and(|v| v != 0);
                if fields.contains(&x.as_str()) && op && nonzero {
                    why(format!("a number written into or tested against `{x}`"));
                    break;
                }
            }
        }
        // a number whose comment names it as an errno or a V4L2 constant
        let named = tokens(comment)
            .iter()
            .any(|w| is_errno_name(w) || w.starts_with("V4L2_") || w.starts_with("VIDIOC_"));
        if named && t.iter().any(|x| int_value(x).is_some()) {
            why("a number named as a kernel constant in its comment".into());
        }
        for x in &t {
            match x.as_str() {
                "{" => depth += 1,
                "}" => depth -= 1,
                _ => {}
            }
        }
        if errno_match.is_some_and(|d| depth <= d) {
            errno_match = None;
        }
    }
    found
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn kernel_constants_are_not_copied_by_hand() {
    // Every crate of the workspace and the binary: this crate is crates/camera.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        rust_files(&krate.unwrap().path().join("src"), &mut files);
    }
    files.sort();
    // Not vacuous: the scan holds this very file (file!() is relative to the workspace), the V4L2 code and
    // every crate.
    let this = root.join(file!());
    assert!(files.contains(&this), "{} not scanned", this.display());
    for f in [
        "crates/camera/src/v4l2/stream.rs",
        "crates/camera/src/v4l2/mod.rs",
        "crates/vision/src/yuv.rs",
        "crates/core/src/lib.rs",
        "crates/daemon/src/publish.rs",
        "crates/infer/src/gpu.rs",
        "src/main.rs",
    ] {
        assert!(files.contains(&root.join(f)), "{f} not scanned");
    }
    let mut report = String::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for (line, why) in hand_constants(&src) {
            let text = src.lines().nth(line - 1).unwrap_or("").trim();
            report.push_str(&format!(
                "{}:{line}: {why}: {text}\n",
                f.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        report.is_empty(),
        "kernel constants written by hand; take them from v4l::v4l_sys, v4l::v4l2::vidioc or rustix:\n{report}"
    );
}

#[test]
fn the_hand_constant_scan_catches_what_it_should_and_nothing_else() {
    // What the V4L2 code once held (and the other shapes such copies take).
    let bad = [
        "const ENODEV: i32 = 19;",
        "pub const EINVAL: i32 = 22;",
        "const EFOO: std::os::raw::c_int = 5;",
        "const RETRYABLE: [i32; 2] = [1, 13];\nlet r = e.raw_os_error();",
        "const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;",
        "const MEMORY_MMAP: u32 = 1;",
        "const FIELD_NONE: u32 = 1;",
        "pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;",
        "pub const CAP_STREAMING: u32 = 0x0400_0000;",
        "const CAP_DEVICE_CAPS: u32 = 0x8000_0000;",
        "const MAP_SHARED: i32 = 0x01;",
        "    const PROT_READ: i32 = 0x1;",
        "const V4L2_BUF_FLAG_ERROR: u32 = 0x40;",
        "const VIDIOC_DQBUF: u64 = 0xc058_5611;",
        "ioctl(fd, 0xc0585611, &mut b)",
        "ioctl(fd, 3227014673, &mut b)",
        "let req = _IOWR('V', 17, 88);",
        "    5,   // EIO",
        "let unplugged = e.raw_os_error() == Some(19);",
        "if e.raw_os_error() != Some(22) {",
        "match e.raw_os_error() {\n    Some(11) | Some(4) => {}\n    _ => {}\n}",
        "return Err(io::Error::from_raw_os_error(19));",
        "let p = libc::PROT_READ;",
        "b.type_ = 1;",
        "let mut req = v4l2_requestbuffers { count, type_: 1, memory: 1 };",
        "if caps.device_caps & 0x0400_0000 == 0 {",
    ];
    for b in bad {
        let src = format!("use v4l::Device;\n{b}\n");
        assert!(!hand_constants(&src).is_empty(), "not caught: {b}");
    }
    let good = [
        "const RETRYABLE: [Errno; 11] = [Errno::PERM, Errno::INTR];",
        "Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => break,",
        "let unplugged = Errno::from_io_error(&e) == Some(Errno::NODEV);",
        "match e.raw_os_error() {\n    Some(code) if RETRYABLE.contains(&code) => {}\n    _ => {}\n}\nlet x = Some(4);",
        "(ProtFlags::READ | ProtFlags::WRITE).bits() as i32,",
        "const POLL: Duration = Duration::from_millis(20);",
        "const MAX_SIDE: u32 = 16_384;",
        "let mut crc = 0xFFFF_FFFFu32;",
        "b.index = index;",
        "let msg = \"const ENODEV: i32 = 19; 0xc0585611 libc::\"; // a quote, not code",
        "let s = r#\"const EINVAL: i32 = 22;\"#;",
        "// const ENODEV: i32 = 19;",
        "/* b.type_ = 1; */",
        "let q = '\"'; const N: usize = 4;",
        "fn f<'a>(x: &'a str) -> usize { x.len() }",
        "std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))",
    ];
    for g in good {
        let src = format!("use v4l::Device;\n{g}\n");
        assert_eq!(hand_constants(&src), [], "flagged: {g}");
    }
    // Anywhere in the workspace, the pixel maths included.
    let yuv = "const V4L2_COLORSPACE_SRGB: u32 = 8;\n";
    assert!(!hand_constants(yuv).is_empty());
}
