//! Memory-mapped V4L2 capture streaming that cannot panic on teardown.
//!
//! The `v4l` crate's own `io::mmap::Stream` panics in `Drop` when `VIDIOC_STREAMOFF` or `munmap` fail with
//! anything but `ENODEV`, and its `next()` re-queues the previous buffer implicitly. Here teardown ignores (and
//! logs) every error, and a dequeued buffer is only reachable inside [`MmapStream::next_with`]'s closure and
//! re-queued right after it, so nothing can hold a borrowed driver buffer across the next dequeue. The crate's
//! `query_caps` and `format` also panic on a card name that is not UTF-8 or an enum value it does not know, so
//! QUERYCAP, ENUM_FMT and S_FMT/G_FMT are done here too. The `v4l` crate still opens the device (its handle
//! `unwrap`s close(2) in `Drop`; closing a V4L2 file descriptor does not fail — the driver's release cannot
//! report errors — so that path is accepted) and enumerates frame sizes and intervals.

use std::io;
use std::os::fd::BorrowedFd;
use std::os::raw::c_void;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use v4l::device::Handle;
use v4l::v4l2;
use v4l::v4l2::vidioc;
// bindgen prefixes the videodev2.h enum values with their enum's name.
use v4l::v4l_sys::{
    v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE as BUF_TYPE_VIDEO_CAPTURE, v4l2_field_V4L2_FIELD_NONE as FIELD_NONE,
    v4l2_memory_V4L2_MEMORY_MMAP as MEMORY_MMAP,
};
use v4l::v4l_sys::{
    v4l2_buffer, v4l2_capability, v4l2_fmtdesc, v4l2_format, v4l2_requestbuffers, V4L2_BUF_FLAG_ERROR,
    V4L2_BUF_FLAG_TIMESTAMP_MASK, V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC, V4L2_CAP_DEVICE_CAPS,
};

/// What the driver said about one dequeued buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    pub bytesused: u32,
    pub sequence: u32,
    /// Kernel timestamp in CLOCK_MONOTONIC ns, when the driver stamps buffers with that clock.
    pub monotonic_ns: Option<u64>,
    /// The driver flagged the data as corrupted (`V4L2_BUF_FLAG_ERROR`).
    pub error: bool,
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

/// The driver's buffers, mapped, and the streaming state. Single-threaded by construction (owned by the
/// capture thread).
pub struct MmapStream {
    handle: Arc<Handle>,
    bufs: Vec<Mapping>,
    streaming: bool,
}

// SAFETY: the mappings are plain shared memory owned by this value; it is moved between threads, never
// shared, and the kernel does not tie them to a thread.
unsafe impl Send for MmapStream {}

/// `ioctl` with a typed argument.
fn ioctl<T>(handle: &Handle, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed value of the type `request` expects (the callers pair
    // each request with its videodev2.h struct); the fd is open for the lifetime of `handle`.
    unsafe { v4l2::ioctl(handle.fd(), request, arg as *mut T as *mut c_void) }
}

fn zeroed_buffer(index: u32) -> v4l2_buffer {
    // SAFETY: v4l2_buffer is a C struct of integers, a timeval and a union of integers/pointers, for which
    // all-zero bytes are a valid value (the kernel API documents zeroing it before use).
    let mut b: v4l2_buffer = unsafe { std::mem::zeroed() };
    b.index = index;
    b.type_ = BUF_TYPE_VIDEO_CAPTURE;
    b.memory = MEMORY_MMAP;
    b
}

/// `VIDIOC_QUERYCAP`, with names decoded lossily (the `v4l` crate's `query_caps` panics on a card name that
/// is not valid UTF-8, e.g. a USB product string cut inside a multi-byte character).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Caps {
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// The device node's capabilities (`device_caps`, falling back to `capabilities`).
    pub device_caps: u32,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn query_caps(handle: &Handle) -> io::Result<Caps> {
    // SAFETY: v4l2_capability is integers and byte arrays; all-zero is valid.
    let mut c: v4l2_capability = unsafe { std::mem::zeroed() };
    ioctl(handle, vidioc::VIDIOC_QUERYCAP, &mut c)?;
    Ok(Caps {
        driver: c_string(&c.driver),
        card: c_string(&c.card),
        bus: c_string(&c.bus_info),
        device_caps: if c.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            c.device_caps
        } else {
            c.capabilities
        },
    })
}

/// `VIDIOC_ENUM_FMT` for video capture: (fourcc, description) per format (lossy names, as above).
pub fn enum_formats(handle: &Handle) -> io::Result<Vec<([u8; 4], String)>> {
    let mut out = Vec::new();
    for index in 0..256 {
        // SAFETY: integers and a byte array; all-zero is valid.
        let mut d: v4l2_fmtdesc = unsafe { std::mem::zeroed() };
        d.index = index;
        d.type_ = BUF_TYPE_VIDEO_CAPTURE;
        match ioctl(handle, vidioc::VIDIOC_ENUM_FMT, &mut d) {
            Ok(()) => out.push((d.pixelformat.to_le_bytes(), c_string(&d.description))),
            Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The current (or just negotiated) single-planar capture format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixFormat {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
    pub colorspace: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
}

fn pix_format(f: &v4l2_format) -> PixFormat {
    // SAFETY: for VIDEO_CAPTURE the kernel fills (and we set) the `pix` member of the union.
    let pix = unsafe { f.fmt.pix };
    // SAFETY: `ycbcr_enc` shares its slot with `hsv_enc`; both are a u32 the kernel sets for the format.
    let ycbcr_enc = unsafe { pix.__bindgen_anon_1.ycbcr_enc };
    PixFormat {
        fourcc: pix.pixelformat.to_le_bytes(),
        width: pix.width,
        height: pix.height,
        bytesperline: pix.bytesperline,
        sizeimage: pix.sizeimage,
        colorspace: pix.colorspace,
        ycbcr_enc,
        quantization: pix.quantization,
    }
}

/// `VIDIOC_S_FMT`: ask for `fourcc` at `width`×`height`, progressive, with the driver choosing the line pitch
/// (a stale, larger `bytesperline` from `G_FMT` would otherwise be honoured). Returns what the driver set.
pub fn set_format(handle: &Handle, fourcc: [u8; 4], width: u32, height: u32) -> io::Result<PixFormat> {
    // SAFETY: v4l2_format is a C struct/union of integers; all-zero is valid.
    let mut f: v4l2_format = unsafe { std::mem::zeroed() };
    f.type_ = BUF_TYPE_VIDEO_CAPTURE;
    // (Writing a union member is safe; the kernel reads `pix` for VIDEO_CAPTURE.)
    f.fmt.pix.width = width;
    f.fmt.pix.height = height;
    f.fmt.pix.pixelformat = u32::from_le_bytes(fourcc);
    f.fmt.pix.field = FIELD_NONE;
    ioctl(handle, vidioc::VIDIOC_S_FMT, &mut f)?;
    Ok(pix_format(&f))
}

/// `VIDIOC_G_FMT`.
pub fn get_format(handle: &Handle) -> io::Result<PixFormat> {
    // SAFETY: as in `set_format`.
    let mut f: v4l2_format = unsafe { std::mem::zeroed() };
    f.type_ = BUF_TYPE_VIDEO_CAPTURE;
    ioctl(handle, vidioc::VIDIOC_G_FMT, &mut f)?;
    Ok(pix_format(&f))
}

impl MmapStream {
    /// Ask for `count` buffers (the driver may grant a different number) and map them.
    pub fn new(handle: Arc<Handle>, count: u32) -> io::Result<Self> {
        let mut req = v4l2_requestbuffers {
            count,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            // SAFETY: the remaining fields are integers (capabilities, flags, reserved) for which zero is valid.
            ..unsafe { std::mem::zeroed() }
        };
        ioctl(&handle, vidioc::VIDIOC_REQBUFS, &mut req)?;
        if req.count == 0 {
            return Err(io::Error::other("driver granted no capture buffers"));
        }
        let mut stream = Self {
            handle,
            bufs: Vec::with_capacity(req.count as usize),
            streaming: false,
        };
        for index in 0..req.count {
            let mut b = zeroed_buffer(index);
            ioctl(&stream.handle, vidioc::VIDIOC_QUERYBUF, &mut b)?;
            // SAFETY: for MMAP buffers QUERYBUF sets `m.offset`, the cookie mmap() takes.
            let offset = unsafe { b.m.offset };
            // SAFETY: mapping `length` bytes at the driver's cookie on our open fd, shared, as the V4L2 mmap
            // streaming API prescribes; the result is checked by the wrapper (MAP_FAILED → Err).
            let ptr = unsafe {
                v4l2::mmap(
                    std::ptr::null_mut(),
                    b.length as usize,
                    (ProtFlags::READ | ProtFlags::WRITE).bits() as i32,
                    MapFlags::SHARED.bits() as i32,
                    stream.handle.fd(),
                    offset as _,
                )
            }?;
            stream.bufs.push(Mapping {
                ptr: ptr.cast(),
                len: b.length as usize,
            });
        }
        Ok(stream)
    }

    pub fn buffer_count(&self) -> usize {
        self.bufs.len()
    }

    /// Queue every buffer and start streaming.
    pub fn start(&mut self) -> io::Result<()> {
        for index in 0..self.bufs.len() {
            ioctl(&self.handle, vidioc::VIDIOC_QBUF, &mut zeroed_buffer(index as u32))?;
        }
        let mut typ = BUF_TYPE_VIDEO_CAPTURE as i32;
        ioctl(&self.handle, vidioc::VIDIOC_STREAMON, &mut typ)?;
        self.streaming = true;
        Ok(())
    }

    /// Wait up to `timeout` for a filled buffer; hand its bytes (`bytesused` of them) and description to `f`,
    /// then give the buffer back to the driver. `Ok(None)`: nothing arrived in time. An error from
    /// re-queueing is returned after `f` ran (the frame is still good, the stream is not).
    pub fn next_with<R>(&mut self, timeout: Duration, f: impl FnOnce(&[u8], BufferInfo) -> R) -> io::Result<Option<R>> {
        // SAFETY: the fd stays open while `self.handle` lives, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.handle.fd()) };
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut b = zeroed_buffer(0);
        match ioctl(&self.handle, vidioc::VIDIOC_DQBUF, &mut b) {
            Ok(()) => {}
            // Woken without a buffer (non-blocking fd): same as a timeout slice.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let Some(map) = self.bufs.get(b.index as usize) else {
            return Err(io::Error::other(format!(
                "driver returned buffer index {} of {}",
                b.index,
                self.bufs.len()
            )));
        };
        let used = (b.bytesused as usize).min(map.len);
        let monotonic = (b.flags & V4L2_BUF_FLAG_TIMESTAMP_MASK) == V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC;
        let info = BufferInfo {
            bytesused: b.bytesused,
            sequence: b.sequence,
            monotonic_ns: monotonic
                .then(|| b.timestamp.tv_sec as u64 * 1_000_000_000 + b.timestamp.tv_usec as u64 * 1000),
            error: b.flags & V4L2_BUF_FLAG_ERROR != 0,
        };
        // SAFETY: the buffer was dequeued, so the driver will not write it until we queue it again below;
        // `map` is a live mapping of `map.len` bytes and `used <= map.len`. The slice does not escape `f`.
        let data = unsafe { std::slice::from_raw_parts(map.ptr, used) };
        let out = f(data, info);
        ioctl(&self.handle, vidioc::VIDIOC_QBUF, &mut zeroed_buffer(b.index))?;
        Ok(Some(out))
    }
}

impl Drop for MmapStream {
    /// STREAMOFF, unmap, free the buffers. Errors (the device is gone, the stream is in an error state) are
    /// logged at debug level and otherwise ignored: teardown never panics.
    fn drop(&mut self) {
        if self.streaming {
            let mut typ = BUF_TYPE_VIDEO_CAPTURE as i32;
            if let Err(e) = ioctl(&self.handle, vidioc::VIDIOC_STREAMOFF, &mut typ) {
                log::debug!("v4l2: STREAMOFF failed during teardown: {e}");
            }
        }
        for m in self.bufs.drain(..) {
            // SAFETY: `m` is a mapping this stream created with exactly this pointer and length, and no slice
            // of it outlives `next_with`.
            let rc = unsafe { v4l2::munmap(m.ptr.cast(), m.len) };
            if let Err(e) = rc {
                log::debug!("v4l2: munmap failed during teardown: {e}");
            }
        }
        let mut req = v4l2_requestbuffers {
            count: 0,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            // SAFETY: integers only, zero is valid.
            ..unsafe { std::mem::zeroed() }
        };
        if let Err(e) = ioctl(&self.handle, vidioc::VIDIOC_REQBUFS, &mut req) {
            log::debug!("v4l2: freeing buffers failed during teardown: {e}");
        }
    }
}
