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
    let mut out = originals(img);
    for (tag, s) in [("6/7", w.min(h) * 6 / 7), ("5/7", w.min(h) * 5 / 7)] {
        let at = [
            ("top-left", 0, 0),
            ("top-right", w - s, 0),
            ("bottom-left", 0, h - s),
            ("bottom-right", w - s, h - s),
            ("centre", (w - s) / 2, (h - s) / 2),
        ];
        for (place, x, y) in at {
            push_crop(&mut out, img, &format!("{tag} {place}"), x, y, s);
        }
    }
    out
}

/// More variants of a square photo, for a tighter measure: itself,
/// mirrored, and crops of `6/7`, `5/7` and `4/7` of the side at nine
/// places (a 3 x 3 grid: corners, edge middles, centre), each also
/// mirrored: 56 in all.
pub fn dense_variants(img: &RgbImage) -> Vec<(String, RgbImage)> {
    let (w, h) = img.dimensions();
    let mut out = originals(img);
    for (tag, s) in [6, 5, 4].map(|n| (format!("{n}/7"), w.min(h) * n / 7)) {
        for (row, y) in [0, (h - s) / 2, h - s].into_iter().enumerate() {
            for (col, x) in [0, (w - s) / 2, w - s].into_iter().enumerate() {
                push_crop(&mut out, img, &format!("{tag} at ({col}, {row})"), x, y, s);
            }
        }
    }
    out
}

fn originals(img: &RgbImage) -> Vec<(String, RgbImage)> {
    vec![
        ("original".to_string(), img.clone()),
        ("mirrored".to_string(), imageops::flip_horizontal(img)),
    ]
}

/// The `s`-sided crop at `(x, y)`, resized back to the photo's size, then
/// the same mirrored.
fn push_crop(out: &mut Vec<(String, RgbImage)>, img: &RgbImage, name: &str, x: u32, y: u32, s: u32) {
    let (w, h) = img.dimensions();
    let crop = imageops::crop_imm(img, x, y, s, s).to_image();
    let crop = imageops::resize(&crop, w, h, FilterType::CatmullRom);
    out.push((format!("{name} crop, mirrored"), imageops::flip_horizontal(&crop)));
    out.push((format!("{name} crop"), crop));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_sets_have_distinct_names_and_the_photos_size() {
        let img = RgbImage::from_fn(28, 28, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 9) as u8, ((x + y) * 4) as u8])
        });
        for (set, count) in [(variants(&img), 22), (dense_variants(&img), 56)] {
            assert_eq!(set.len(), count);
            let names: std::collections::HashSet<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names.len(), count, "names repeat");
            assert!(set.iter().all(|(_, v)| v.dimensions() == (28, 28)));
            // Each crop comes with its mirror image, and crops differ.
            for pair in set.chunks_exact(2) {
                assert_eq!(pair[0].1, imageops::flip_horizontal(&pair[1].1), "{}", pair[0].0);
            }
            let images: std::collections::HashSet<&[u8]> =
                set.iter().map(|(_, v)| v.as_raw().as_slice()).collect();
            assert_eq!(images.len(), count, "two variants are the same image");
        }
    }
}
