//! The builtin backend's image analysis on real PNG, JPEG, GIF and WebP bytes.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, ImageFormat};
use ragpool_executor::backend::{self, Backend, BackendConfig, ImageAnalysis, TaskContext};
use ragpool_queue::payload::AnalyzeImage;

mod backend_support;
use backend_support::{base64, encode, red_blue};

async fn builtin() -> std::sync::Arc<dyn Backend> {
    backend::build(&BackendConfig::default()).await.unwrap()
}

async fn analyse(bytes: &[u8]) -> ImageAnalysis {
    let req = AnalyzeImage {
        image: Some(base64(bytes)),
        ..Default::default()
    };
    let value = builtin()
        .await
        .analyze_image(&req, &TaskContext::default())
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

fn distance(hex: &str, rgb: [u8; 3]) -> i32 {
    let c = |i: usize| i32::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap();
    (0..3)
        .map(|i| (c(i) - i32::from(rgb[i])).abs())
        .max()
        .unwrap()
}

#[tokio::test]
async fn red_and_blue_halves_in_every_format() {
    for (format, name) in [
        (ImageFormat::Png, "png"),
        (ImageFormat::Jpeg, "jpeg"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::WebP, "webp"),
    ] {
        let a = analyse(&encode(&red_blue(), format)).await;
        assert_eq!(a.format, name);
        assert_eq!((a.width, a.height), (64, 32), "{name}");

        let colors = &a.dominant_colors;
        assert!(colors.len() >= 2, "{name}: {colors:?}");
        let red = colors.iter().find(|c| c.name == "red").expect("red");
        let blue = colors.iter().find(|c| c.name == "blue").expect("blue");
        // JPEG is lossy: colours come back close, not exact.
        assert!(distance(&red.hex, [255, 0, 0]) <= 12, "{name}: {red:?}");
        assert!(distance(&blue.hex, [0, 0, 255]) <= 12, "{name}: {blue:?}");
        assert!((0.4..=0.6).contains(&red.share), "{name}: {red:?}");
        assert!((0.4..=0.6).contains(&blue.share), "{name}: {blue:?}");

        // Rec. 601 luma: red 0.299, blue 0.114; their mean is about 0.21.
        assert!(
            (a.brightness - 0.206).abs() < 0.03,
            "{name}: {}",
            a.brightness
        );
        assert!((a.contrast - 0.092).abs() < 0.03, "{name}: {}", a.contrast);
        assert_eq!(a.orientation, None, "{name}");
        assert_eq!(a.perceptual_hash.len(), 16);

        for needle in [
            "64×32",
            &name.to_uppercase(),
            "red",
            "blue",
            &red.hex,
            &blue.hex,
        ] {
            assert!(
                a.summary.contains(needle),
                "{name}: {needle} not in {}",
                a.summary
            );
        }
        assert!(
            a.summary.contains("landscape") && a.summary.contains("dark"),
            "{}",
            a.summary
        );
    }
}

#[tokio::test]
async fn similar_images_have_close_hashes_and_different_ones_do_not() {
    let png = analyse(&encode(&red_blue(), ImageFormat::Png)).await;
    let jpeg = analyse(&encode(&red_blue(), ImageFormat::Jpeg)).await;
    let flipped = analyse(&encode(&red_blue().fliph(), ImageFormat::Png)).await;
    let bits = |a: &str, b: &str| {
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        (a ^ b).count_ones()
    };
    assert!(bits(&png.perceptual_hash, &jpeg.perceptual_hash) <= 4);
    assert!(bits(&png.perceptual_hash, &flipped.perceptual_hash) >= 4);
}

#[tokio::test]
async fn exif_orientation_is_reported_for_a_jpeg_that_carries_it() {
    let field = exif::Field {
        tag: exif::Tag::Orientation,
        ifd_num: exif::In::PRIMARY,
        value: exif::Value::Short(vec![6]),
    };
    let mut writer = exif::experimental::Writer::new();
    writer.push_field(&field);
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false).unwrap();

    let rgb = red_blue().to_rgb8();
    let mut jpeg = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, 90);
    encoder.set_exif_metadata(tiff.into_inner()).unwrap();
    encoder
        .write_image(rgb.as_raw(), 64, 32, image::ExtendedColorType::Rgb8)
        .unwrap();

    let a = analyse(&jpeg).await;
    assert_eq!(a.format, "jpeg");
    assert_eq!(a.orientation, Some(6));
    assert!(a.summary.contains("EXIF orientation 6"), "{}", a.summary);
}

#[tokio::test]
async fn bad_images_are_permanent_bad_input() {
    let backend = builtin().await;
    let cx = TaskContext::default();
    let png = encode(&red_blue(), ImageFormat::Png);
    let cases = [
        (
            "not an image",
            AnalyzeImage {
                image: Some(base64(b"hello, world")),
                ..Default::default()
            },
        ),
        (
            "truncated png",
            AnalyzeImage {
                image: Some(base64(&png[..png.len() / 2])),
                ..Default::default()
            },
        ),
        (
            "bad base64",
            AnalyzeImage {
                image: Some("%%% not base64 %%%".into()),
                ..Default::default()
            },
        ),
        ("no image", AnalyzeImage::default()),
        (
            "both image and url",
            AnalyzeImage {
                image: Some(base64(&png)),
                image_url: Some("https://example.com/a.png".into()),
                ..Default::default()
            },
        ),
        (
            "plain http url",
            AnalyzeImage {
                image_url: Some("http://example.com/a.png".into()),
                ..Default::default()
            },
        ),
        (
            "loopback url",
            AnalyzeImage {
                image_url: Some("https://127.0.0.1/a.png".into()),
                ..Default::default()
            },
        ),
        (
            "metadata url",
            AnalyzeImage {
                image_url: Some("https://169.254.169.254/".into()),
                ..Default::default()
            },
        ),
    ];
    for (what, req) in cases {
        let err = backend.analyze_image(&req, &cx).await.unwrap_err();
        assert_eq!(err.kind(), "bad_input", "{what}: {err}");
        assert!(!err.is_retryable(), "{what}");
    }
}

/// A small real image whose header is rewritten to claim `width`×`height`: the file stays a
/// few hundred bytes, and only a decoder that trusted the header would allocate for it.
fn claiming(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let mut bytes = encode(&red_blue(), format);
    let find = |bytes: &[u8], tag: &[u8]| {
        bytes
            .windows(tag.len())
            .position(|w| w == tag)
            .expect("the header tag")
    };
    match format {
        ImageFormat::Jpeg => {
            // SOF0: FF C0, length, precision, height, width (big-endian).
            let sof = find(&bytes, &[0xFF, 0xC0]);
            bytes[sof + 5..sof + 7].copy_from_slice(&(height as u16).to_be_bytes());
            bytes[sof + 7..sof + 9].copy_from_slice(&(width as u16).to_be_bytes());
        }
        ImageFormat::Gif => {
            // The logical screen: width and height, little-endian, after "GIF89a".
            bytes[6..8].copy_from_slice(&(width as u16).to_le_bytes());
            bytes[8..10].copy_from_slice(&(height as u16).to_le_bytes());
        }
        ImageFormat::WebP => {
            // Lossless: "VP8L", chunk size, 0x2f, then 14 bits width-1, 14 bits height-1.
            let at = find(&bytes, b"VP8L") + 9;
            let old = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let new = (old & 0xF000_0000) | (width - 1) | ((height - 1) << 14);
            bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
        }
        _ => unreachable!(),
    }
    bytes
}

#[tokio::test]
async fn images_too_large_for_the_memory_budget_are_refused_before_decoding() {
    let backend = builtin().await;
    let cx = TaskContext::default();
    for (what, bytes) in [
        (
            "lossless webp 9000×9000",
            claiming(ImageFormat::WebP, 9000, 9000),
        ),
        (
            "gif with a 16000×4000 screen",
            claiming(ImageFormat::Gif, 16000, 4000),
        ),
        ("jpeg 8000×8000", claiming(ImageFormat::Jpeg, 8000, 8000)),
    ] {
        assert!(bytes.len() < 4096, "{what}: {} bytes", bytes.len());
        let req = AnalyzeImage {
            image: Some(base64(&bytes)),
            ..Default::default()
        };
        let err = backend.analyze_image(&req, &cx).await.unwrap_err();
        assert_eq!(err.kind(), "bad_input", "{what}: {err}");
        assert!(
            err.message()
                .starts_with("image too large for the memory budget"),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn the_budget_is_a_setting() {
    let png = encode(&red_blue(), ImageFormat::Png);
    let req = AnalyzeImage {
        image: Some(base64(&png)),
        ..Default::default()
    };
    let cx = TaskContext::default();
    let with_budget = |bytes: u64| {
        BackendConfig::Builtin(backend::BuiltinConfig {
            image_memory_bytes: bytes,
            ..Default::default()
        })
    };
    // 64×32 RGB plus the downscaler's rows is about 137 KB; the payload, its decoded copy and
    // the decoder's 4 MiB metadata allowance come on top.
    let roomy = backend::build(&with_budget(8 << 20)).await.unwrap();
    let a = roomy.analyze_image(&req, &cx).await.unwrap();
    assert_eq!(a["width"], 64);
    let tight = backend::build(&with_budget(64 << 10)).await.unwrap();
    let err = tight.analyze_image(&req, &cx).await.unwrap_err();
    assert!(
        err.message()
            .starts_with("image too large for the memory budget"),
        "{err}"
    );
}
