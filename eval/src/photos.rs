//! Model inputs from photos: decoded, resized to the model's input, and
//! varied by crops and mirroring, so that a handful of real photos gives the
//! many inputs an accuracy measurement needs.

use image::RgbImage;
use image::imageops::{self, FilterType};

/// `img` as NCHW floats `(x - mean) / scale`.
pub fn nchw(img: &RgbImage, mean: f32, scale: f32) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut out = vec![0.0; 3 * (w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h as usize + y as usize) * w as usize + x as usize] = (f32::from(p[c]) - mean) / scale;
        }
    }
    out
}

/// A centered square crop of `img`, resized to `side` (bicubic); `img` as
/// it is when it already is `side` x `side`.
pub fn square(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (side, side) {
        return img.clone();
    }
    let s = w.min(h);
    let crop = imageops::crop_imm(img, (w - s) / 2, (h - s) / 2, s, s).to_image();
    imageops::resize(&crop, side, side, FilterType::CatmullRom)
}

/// Named variants of a square photo, each the photo's size: itself,
/// mirrored, and crops of `6/7` and `5/7` of the side at the four corners
/// and the centre (resized back), each also mirrored: 22 in all.
pub fn variants(img: &RgbImage) -> Vec<(String, RgbImage)> {
    let (w, h) = img.dimensions();
    let mut out = vec![
        ("original".to_string(), img.clone()),
        ("mirrored".to_string(), imageops::flip_horizontal(img)),
    ];
    for (tag, s) in [("6/7", w.min(h) * 6 / 7), ("5/7", w.min(h) * 5 / 7)] {
        let at = [
            ("top-left", 0, 0),
            ("top-right", w - s, 0),
            ("bottom-left", 0, h - s),
            ("bottom-right", w - s, h - s),
            ("centre", (w - s) / 2, (h - s) / 2),
        ];
        for (place, x, y) in at {
            let crop = imageops::crop_imm(img, x, y, s, s).to_image();
            let crop = imageops::resize(&crop, w, h, FilterType::CatmullRom);
            out.push((
                format!("{tag} {place} crop, mirrored"),
                imageops::flip_horizontal(&crop),
            ));
            out.push((format!("{tag} {place} crop"), crop));
        }
    }
    out
}
