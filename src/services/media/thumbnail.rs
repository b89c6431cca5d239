//! Thumbnails: which size serves a request, and making them (JPEG, PNG, GIF's first frame,
//! WebP). Pure functions; the service runs [`generate`] on the blocking pool under a
//! semaphore.
//!
//! The spec's recommended sizes (32×32 and 96×96 cropped; 320×240, 640×480 and 800×600
//! scaled) are the only ones made: a request is served by the smallest of them at least as
//! large as asked (the same method preferred), so the number of thumbnails per media is
//! bounded. A request larger than all of them, or for an image already smaller than the
//! chosen size, gets the original, as the spec says: never upscaled, never smaller than
//! asked unless the original is.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

impl Size {
    /// The key thumbnails are stored under: `320x240/scale`.
    pub fn key(&self) -> String {
        format!("{}x{}/{}", self.width, self.height, self.method.as_str())
    }
}

/// The spec's recommended thumbnail sizes.
pub const STANDARD: [Size; 5] = [
    Size { width: 32, height: 32, method: Method::Crop },
    Size { width: 96, height: 96, method: Method::Crop },
    Size { width: 320, height: 240, method: Method::Scale },
    Size { width: 640, height: 480, method: Method::Scale },
    Size { width: 800, height: 600, method: Method::Scale },
];

/// Content types a thumbnail can be made of.
pub const THUMBNAILABLE: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The standard size serving a request: the smallest at least as large in both dimensions,
/// of the requested method if one is large enough, else of the other. `None`: larger than
/// every standard size (the original serves it).
pub fn choose(width: u32, height: u32, method: Method) -> Option<Size> {
    let fits = |s: &&Size| s.width >= width && s.height >= height;
    let area = |s: &&Size| u64::from(s.width) * u64::from(s.height);
    STANDARD
        .iter()
        .filter(fits)
        .filter(|s| s.method == method)
        .min_by_key(area)
        .or_else(|| STANDARD.iter().filter(fits).min_by_key(area))
        .copied()
}

/// The dimensions of the thumbnail of a `src_w`×`src_h` image at `size`; `None` when the
/// image is not larger than the size (the original is the answer then).
pub fn target_dims(src_w: u32, src_h: u32, size: Size) -> Option<(u32, u32)> {
    if src_w == 0 || src_h == 0 || (src_w <= size.width && src_h <= size.height) {
        return None;
    }
    let (sw, sh) = (u64::from(src_w), u64::from(src_h));
    let (tw, th) = (u64::from(size.width), u64::from(size.height));
    match size.method {
        // Fit inside the box, keeping the aspect ratio.
        Method::Scale => {
            let (w, h) = if tw * sh <= th * sw {
                (tw, (tw * sh / sw).max(1))
            } else {
                ((th * sw / sh).max(1), th)
            };
            Some((w as u32, h as u32))
        }
        // The box's aspect ratio; never larger than the source (no upscaling).
        Method::Crop => {
            if sw >= tw && sh >= th {
                Some((tw as u32, th as u32))
            } else {
                // Shrink the box until it fits the source, keeping its aspect ratio.
                let (w, h) = if sw * th <= sh * tw {
                    (sw, (sw * th / tw).max(1))
                } else {
                    ((sh * tw / th).max(1), sh)
                };
                Some((w as u32, h as u32))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not an image of a supported format, or undecodable.
    #[error("cannot thumbnail this content: {0}")]
    Unsupported(String),
    /// More pixels than allowed (a decompression bomb, or merely huge).
    #[error("image of {0} pixels is larger than the thumbnailing limit")]
    TooLarge(u64),
}

/// A made thumbnail.
pub struct Thumbnail {
    pub size: Size,
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Reads the format and dimensions from the header only (no pixels decoded).
pub fn probe(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), ThumbnailError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Unsupported(e.to_string()))?;
    let format = reader
        .format()
        .filter(|f| {
            matches!(f, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)
        })
        .ok_or_else(|| ThumbnailError::Unsupported("not a JPEG, PNG, GIF or WebP image".into()))?;
    let (w, h) =
        reader.into_dimensions().map_err(|e| ThumbnailError::Unsupported(e.to_string()))?;
    Ok((format, w, h))
}

/// Decodes the image once (refusing more than `max_pixels` pixels before any pixel is
/// decoded, and bounding the decoder's allocations) and makes a thumbnail for each of
/// `sizes` that the image is larger than.
pub fn generate(
    bytes: &[u8],
    max_pixels: u64,
    sizes: &[Size],
) -> Result<Vec<Thumbnail>, ThumbnailError> {
    let (format, w, h) = probe(bytes)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(ThumbnailError::TooLarge(pixels));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // RGBA at 16 bits per channel, plus the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 * 1024 * 1024));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ThumbnailError::TooLarge(pixels),
        other => ThumbnailError::Unsupported(other.to_string()),
    })?;
    let mut out = Vec::new();
    for size in sizes {
        let Some((tw, th)) = target_dims(image.width(), image.height(), *size) else { continue };
        let resized = match size.method {
            Method::Scale => image.resize_exact(tw, th, FilterType::Triangle),
            Method::Crop => crop_to(&image, tw, th),
        };
        let (content_type, bytes) = encode(&resized, format)?;
        out.push(Thumbnail { size: *size, width: tw, height: th, content_type, bytes });
    }
    Ok(out)
}

/// The largest centred region of the target's aspect ratio, scaled to `tw`×`th`.
fn crop_to(image: &DynamicImage, tw: u32, th: u32) -> DynamicImage {
    let (sw, sh) = (u64::from(image.width()), u64::from(image.height()));
    let (cw, ch) = if sw * u64::from(th) > sh * u64::from(tw) {
        ((sh * u64::from(tw) / u64::from(th)).max(1), sh)
    } else {
        (sw, (sw * u64::from(th) / u64::from(tw)).max(1))
    };
    let x = (sw - cw) / 2;
    let y = (sh - ch) / 2;
    image.crop_imm(x as u32, y as u32, cw as u32, ch as u32).resize_exact(
        tw,
        th,
        FilterType::Triangle,
    )
}

/// JPEG stays JPEG (quality 80); everything else becomes PNG (keeps transparency).
fn encode(
    image: &DynamicImage,
    source: ImageFormat,
) -> Result<(&'static str, Vec<u8>), ThumbnailError> {
    let mut buf = Vec::new();
    let result = if source == ImageFormat::Jpeg {
        JpegEncoder::new_with_quality(&mut buf, 80).encode_image(&image.to_rgb8())
    } else {
        image.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
    };
    result.map_err(|e| ThumbnailError::Unsupported(format!("encoding: {e}")))?;
    Ok((if source == ImageFormat::Jpeg { "image/jpeg" } else { "image/png" }, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::new_rgb8(w, h);
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Png).unwrap();
        buf
    }

    #[test]
    fn requests_map_to_the_smallest_standard_size_covering_them() {
        assert_eq!(choose(32, 32, Method::Crop).unwrap().key(), "32x32/crop");
        assert_eq!(choose(50, 50, Method::Crop).unwrap().key(), "96x96/crop");
        assert_eq!(choose(96, 96, Method::Scale).unwrap().key(), "320x240/scale");
        assert_eq!(choose(320, 240, Method::Crop).unwrap().key(), "320x240/scale");
        assert_eq!(choose(700, 500, Method::Scale).unwrap().key(), "800x600/scale");
        assert_eq!(choose(801, 10, Method::Scale), None);
    }

    #[test]
    fn scale_fits_the_box_and_crop_fills_it_without_upscaling() {
        let scale = Size { width: 320, height: 240, method: Method::Scale };
        assert_eq!(target_dims(1000, 500, scale), Some((320, 160)));
        assert_eq!(target_dims(500, 1000, scale), Some((120, 240)));
        assert_eq!(target_dims(300, 200, scale), None);
        let crop = Size { width: 96, height: 96, method: Method::Crop };
        assert_eq!(target_dims(1000, 500, crop), Some((96, 96)));
        assert_eq!(target_dims(200, 50, crop), Some((50, 50)));
        assert_eq!(target_dims(90, 90, crop), None);
    }

    #[test]
    fn thumbnails_have_the_computed_dimensions() {
        let thumbs = generate(&png(1000, 500), 1_000_000, &STANDARD).unwrap();
        let dims: Vec<_> = thumbs.iter().map(|t| (t.size.key(), t.width, t.height)).collect();
        assert_eq!(
            dims,
            vec![
                ("32x32/crop".to_owned(), 32, 32),
                ("96x96/crop".to_owned(), 96, 96),
                ("320x240/scale".to_owned(), 320, 160),
                ("640x480/scale".to_owned(), 640, 320),
                ("800x600/scale".to_owned(), 800, 400),
            ]
        );
        for t in &thumbs {
            let decoded = image::load_from_memory(&t.bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (t.width, t.height));
        }
    }

    #[test]
    fn images_with_too_many_pixels_are_refused_before_decoding() {
        let err = generate(&png(2000, 2000), 1_000_000, &STANDARD).err().unwrap();
        assert!(matches!(err, ThumbnailError::TooLarge(4_000_000)));
    }

    #[test]
    fn other_content_is_not_thumbnailed() {
        assert!(matches!(
            generate(b"%PDF-1.7 hello", 1_000_000, &STANDARD),
            Err(ThumbnailError::Unsupported(_))
        ));
    }
}
