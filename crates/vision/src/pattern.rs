//! A moving test pattern (shapes over a gradient) and RGB → YUYV/NV12 encoders: frames for the synthetic
//! camera source and for tests of the raw-format paths.

/// Draw frame `t` as packed RGB8 into `out` (resized to `w*h*3`).
pub fn render_rgb(t: u64, w: u32, h: u32, out: &mut Vec<u8>) {
    let (w, h) = (w as usize, h as usize);
    out.resize(w * h * 3, 0);
    let (bx, by, bs) = ((t as usize * 17) % w, (t as usize * 5) % h, (h / 4).max(2));
    let (cx, cy, r) = (w - 1 - (t as usize * 11) % w, h / 2, (h / 6).max(2) as i64);
    for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
        let shade = (40 + 160 * y / h) as u8;
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            let rgb = if x >= bx && x < bx + bs && y >= by && y < by + bs {
                [220, 40, 40]
            } else if dx * dx + dy * dy <= r * r {
                [30, 60, 210]
            } else {
                [shade, shade, (shade / 2).saturating_add(60)]
            };
            px.copy_from_slice(&rgb);
        }
    }
}

/// BT.601 limited-range RGB → (Y, U, V).
fn yuv(rgb: &[u8]) -> (u8, u8, u8) {
    let (r, g, b) = (f32::from(rgb[0]), f32::from(rgb[1]), f32::from(rgb[2]));
    let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
    let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
    let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
    (y.round() as u8, u.round() as u8, v.round() as u8)
}

/// RGB8 → YUYV (4:2:2, chroma from the left pixel of each pair). `w` must be even.
pub fn rgb_to_yuyv(rgb: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for pair in rgb.chunks_exact(6) {
        let (y0, u, v) = yuv(&pair[..3]);
        let (y1, _, _) = yuv(&pair[3..]);
        out.extend_from_slice(&[y0, u, y1, v]);
    }
}

/// RGB8 → NV12 (4:2:0, chroma from the top-left pixel of each 2×2 block). `w`, `h` must be even.
pub fn rgb_to_nv12(rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend(rgb.chunks_exact(3).map(|p| yuv(p).0));
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            let (_, u, v) = yuv(&rgb[(y * w + x) * 3..]);
            out.extend_from_slice(&[u, v]);
        }
    }
}
