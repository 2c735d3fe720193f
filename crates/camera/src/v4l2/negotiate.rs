//! Pure decisions of the V4L2 source: which format and size to ask for, the reconnect schedule, and the
//! driver-sequence accounting. No I/O here, so all of it is unit-tested.

use std::time::Duration;

use crate::config::CameraFormat;

impl CameraFormat {
    /// The format of a V4L2 fourcc, if Kestrel can take it.
    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        match &fourcc {
            b"MJPG" | b"JPEG" => Some(Self::Mjpeg),
            b"YUYV" => Some(Self::Yuyv),
            b"NV12" => Some(Self::Nv12),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mjpeg => "mjpeg",
            Self::Yuyv => "yuyv",
            Self::Nv12 => "nv12",
        }
    }
}

/// Frame sizes a device offers for one format (`VIDIOC_ENUM_FRAMESIZES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeOffer {
    Discrete {
        width: u32,
        height: u32,
    },
    /// Continuous ranges are reported as step 1.
    Stepwise {
        min_width: u32,
        max_width: u32,
        step_width: u32,
        min_height: u32,
        max_height: u32,
        step_height: u32,
    },
}

/// One pixel format a device offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatOffer {
    pub fourcc: [u8; 4],
    pub sizes: Vec<SizeOffer>,
}

/// What to ask the driver for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub format: CameraFormat,
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
}

/// The first format in `prefs` the device offers, at the offered size closest to `want` (exact if offered).
/// `None` when the device offers none of them. A format whose sizes cannot be enumerated is asked for at
/// `want` and the driver adjusts.
pub fn choose(prefs: &[CameraFormat], offers: &[FormatOffer], want: (u32, u32)) -> Option<Request> {
    prefs.iter().find_map(|&format| {
        let offer = offers
            .iter()
            .find(|o| CameraFormat::from_fourcc(o.fourcc) == Some(format))?;
        let (width, height) = closest_size(&offer.sizes, want).unwrap_or(want);
        Some(Request {
            format,
            fourcc: offer.fourcc,
            width,
            height,
        })
    })
}

/// Closest offered size to `want`: smallest |Δw| + |Δh|, ties to the larger size (more detail).
pub fn closest_size(sizes: &[SizeOffer], want: (u32, u32)) -> Option<(u32, u32)> {
    let fit = |v: u32, min: u32, max: u32, step: u32| {
        let step = step.max(1);
        let v = v.clamp(min, max.max(min));
        let k = (v - min + step / 2) / step;
        (min + k * step).min(max.max(min))
    };
    sizes
        .iter()
        .map(|s| match *s {
            SizeOffer::Discrete { width, height } => (width, height),
            SizeOffer::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => (
                fit(want.0, min_width, max_width, step_width),
                fit(want.1, min_height, max_height, step_height),
            ),
        })
        .min_by_key(|&(w, h)| {
            let cost = w.abs_diff(want.0) + h.abs_diff(want.1);
            (cost, std::cmp::Reverse(u64::from(w) * u64::from(h)))
        })
}

/// Reconnect delays: `min`, doubling, capped at `max`; [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; the one after is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Tells the drops kestrel caused from the driver's own. The driver can only skip a frame for want of a queued
/// buffer if the capture thread stayed away from it — copying out, or waiting for a free frame buffer — about
/// as long as the queued buffers last; kestrel re-queues every buffer before it returns a frame, so while the
/// capture thread waits in `poll` every buffer is the driver's. The caller measures the absence as the longer
/// of the time away from `poll` and the age of the dequeued buffer (a process that was descheduled or stopped
/// while "waiting" finds old buffers). A gap seen within (buffers + 1) frame periods of a long absence is
/// counted as kestrel's (`capture_late`); any other gap is the driver's (a device that dropped frames itself,
/// or a driver timer that ran late).
#[derive(Clone, Debug, Default)]
pub struct LateCapture {
    /// CLOCK_MONOTONIC ns of the last dequeue that followed a long absence.
    last_long_away_ns: Option<u64>,
    /// How long that absence was.
    last_long_away: Duration,
}

impl LateCapture {
    /// Record one dequeue at `now_ns`, after the capture thread was away from the driver for `away`, with
    /// `missed` frames skipped before it; returns how many of those kestrel caused. `fps` ≤ 0 (the driver did
    /// not say) is taken as 30.
    pub fn observe(&mut self, now_ns: u64, away: Duration, missed: u64, buffers: u32, fps: f64) -> u64 {
        let period_ns = (1e9 / if fps > 0.0 { fps } else { 30.0 }) as u64;
        let long = u64::from(buffers.saturating_sub(1).max(1)) * period_ns;
        if away.as_nanos() >= u128::from(long) {
            self.last_long_away_ns = Some(now_ns);
            self.last_long_away = away;
        }
        let window = u64::from(buffers + 1) * period_ns;
        match self.last_long_away_ns {
            Some(t) if missed > 0 && now_ns.saturating_sub(t) <= window => missed,
            _ => 0,
        }
    }

    /// The last long absence (what made the drops that [`LateCapture::observe`] blamed on kestrel).
    pub fn last_absence(&self) -> Duration {
        self.last_long_away
    }
}

/// Counts frames the driver skipped, from the gaps in its buffer sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct SequenceGaps {
    last: Option<u32>,
}

impl SequenceGaps {
    /// Record the sequence number of the next dequeued buffer; returns how many the driver skipped before it.
    /// A number that goes backwards (a restarted stream, a driver reset) resynchronises without counting.
    /// Wrap-around at 2^32 is a normal step.
    pub fn observe(&mut self, seq: u32) -> u64 {
        let missed = match self.last {
            Some(last) => {
                let step = seq.wrapping_sub(last);
                if step == 0 || step > u32::MAX / 2 {
                    0 // repeated or backwards: resync
                } else {
                    u64::from(step - 1)
                }
            }
            None => 0,
        };
        self.last = Some(seq);
        missed
    }

    /// Forget the last number (call when the stream restarts).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CameraFormat::*;

    fn offer(fourcc: &[u8; 4], sizes: &[(u32, u32)]) -> FormatOffer {
        FormatOffer {
            fourcc: *fourcc,
            sizes: sizes
                .iter()
                .map(|&(width, height)| SizeOffer::Discrete { width, height })
                .collect(),
        }
    }

    #[test]
    fn the_first_preferred_format_the_camera_offers_wins() {
        let offers = [
            offer(b"YUYV", &[(640, 480), (1280, 720)]),
            offer(b"NV12", &[(640, 480)]),
            offer(b"RGB3", &[(640, 480)]),
        ];
        // MJPEG preferred but not offered (as with vivid): YUYV.
        let r = choose(&[Mjpeg, Yuyv, Nv12], &offers, (640, 480)).unwrap();
        assert_eq!((r.format, &r.fourcc, r.width, r.height), (Yuyv, b"YUYV", 640, 480));
        let r = choose(&[Nv12, Yuyv], &offers, (1280, 720)).unwrap();
        assert_eq!((r.format, r.width, r.height), (Nv12, 640, 480));
        assert_eq!(choose(&[Mjpeg], &offers, (640, 480)), None);
        // A UVC camera calling it JPEG.
        let r = choose(&[Mjpeg, Yuyv], &[offer(b"JPEG", &[(320, 240)])], (640, 480)).unwrap();
        assert_eq!((r.format, &r.fourcc), (Mjpeg, b"JPEG"));
        // Sizes not enumerable: ask for what we want.
        let r = choose(&[Yuyv], &[offer(b"YUYV", &[])], (800, 600)).unwrap();
        assert_eq!((r.width, r.height), (800, 600));
    }

    #[test]
    fn closest_size_prefers_exact_then_nearest_then_larger() {
        let s = |v: &[(u32, u32)]| offer(b"YUYV", v).sizes;
        let sizes = s(&[(320, 180), (640, 360), (640, 480), (1280, 720), (1920, 1080)]);
        assert_eq!(closest_size(&sizes, (640, 480)), Some((640, 480)));
        assert_eq!(closest_size(&sizes, (1280, 700)), Some((1280, 720)));
        assert_eq!(closest_size(&sizes, (4000, 3000)), Some((1920, 1080)));
        // |Δ| ties between 640x360 and 640x480 for 640x420: the larger one.
        assert_eq!(closest_size(&sizes, (640, 420)), Some((640, 480)));
        let stepwise = [SizeOffer::Stepwise {
            min_width: 16,
            max_width: 1920,
            step_width: 16,
            min_height: 16,
            max_height: 1080,
            step_height: 8,
        }];
        assert_eq!(closest_size(&stepwise, (650, 481)), Some((656, 480)));
        assert_eq!(closest_size(&stepwise, (4000, 4000)), Some((1920, 1080)));
        assert_eq!(closest_size(&stepwise, (1, 1)), Some((16, 16)));
        assert_eq!(closest_size(&[], (1, 1)), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ms: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        let mut odd = Backoff::new(Duration::from_millis(300), Duration::from_millis(100));
        assert_eq!(odd.next_delay(), Duration::from_millis(300));
        assert_eq!(odd.next_delay(), Duration::from_millis(300));
    }

    #[test]
    fn late_capture_tells_our_drops_from_the_drivers() {
        let ms = |v: u64| Duration::from_millis(v);
        let at = |v: u64| v * 1_000_000;
        // 25 fps, 4 buffers: a long absence is >= 120 ms, and gaps within 200 ms of it are ours.
        let mut l = LateCapture::default();
        // Waiting in poll the whole time: a gap is the driver's.
        assert_eq!(l.observe(at(40), ms(1), 0, 4, 25.0), 0);
        assert_eq!(l.observe(at(120), ms(1), 1, 4, 25.0), 0);
        // Away 200 ms (e.g. no free frame buffer): the driver filled all 4 buffers and dropped the 5th; the gap
        // shows only after the 4 filled buffers are drained with no absence at all.
        assert_eq!(l.observe(at(400), ms(200), 0, 4, 25.0), 0);
        for t in [401, 402, 403] {
            assert_eq!(l.observe(at(t), ms(0), 0, 4, 25.0), 0);
        }
        assert_eq!(
            l.observe(at(440), ms(0), 1, 4, 25.0),
            1,
            "ours: within the window of the absence"
        );
        assert_eq!(l.last_absence(), ms(200));
        // Long after it, a gap is the driver's again.
        assert_eq!(l.observe(at(1000), ms(1), 2, 4, 25.0), 0);
        // An absence just under the limit is not long.
        let mut l = LateCapture::default();
        assert_eq!(l.observe(at(100), ms(119), 1, 4, 25.0), 0);
        assert_eq!(l.observe(at(300), ms(120), 1, 4, 25.0), 1);
        // Unknown rate: 30 fps assumed (long = 3 x 33.3 ms); 1 or 2 buffers: one period is long.
        let mut l = LateCapture::default();
        assert_eq!(l.observe(at(100), ms(99), 1, 4, 0.0), 0);
        assert_eq!(l.observe(at(200), ms(101), 1, 4, 0.0), 1);
        let mut l = LateCapture::default();
        assert_eq!(l.observe(at(100), ms(41), 1, 2, 25.0), 1);
    }

    #[test]
    fn sequence_gaps_count_driver_drops_only() {
        let mut g = SequenceGaps::default();
        let missed: Vec<u64> = [5, 6, 7, 9, 10, 14].iter().map(|&s| g.observe(s)).collect();
        assert_eq!(missed, [0, 0, 0, 1, 0, 3]);
        // Restarted stream: numbering starts again, nothing counted.
        assert_eq!(g.observe(0), 0);
        assert_eq!(g.observe(1), 0);
        // Repeated number: not a drop.
        assert_eq!(g.observe(1), 0);
        // Wrap-around.
        let mut g = SequenceGaps::default();
        g.observe(u32::MAX - 1);
        assert_eq!(g.observe(u32::MAX), 0);
        assert_eq!(g.observe(1), 1);
        g.reset();
        assert_eq!(g.observe(100), 0);
    }
}
