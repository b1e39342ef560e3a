//! `--plot FILE`: queue depth and replicas over time, one line per run, as SVG or PNG (by the
//! file's extension).
//!
//! Text is drawn with a font compiled into the binary (a subset of DejaVu Sans, see
//! `cli/assets/`), so charts need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::SimulateError;
use super::engine::Outcome;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 640;
/// One colour per run, in order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// A run to draw and its legend.
pub struct Series<'a> {
    pub label: String,
    pub outcome: &'a Outcome,
}

/// Draws `series` into `path` (`.svg` or `.png`).
pub fn plot(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), SimulateError> {
    REGISTER.call_once(|| {
        // The font is a fixed, valid file: a failure here is a build mistake, and the
        // drawing below would report the missing font.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let fail = |message: String| SimulateError::Flag {
        flag: "--plot",
        message: format!("{}: {message}", path.display()),
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {
            let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw(&root, title, series).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        Some("png") => {
            // Drawn into memory and encoded with the `image` crate the executor uses already,
            // so the binary carries one PNG encoder, not plotters' own copy of another version.
            let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
            {
                let root =
                    BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
                draw(&root, title, series).map_err(fail)?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            let chart = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
                .ok_or_else(|| fail("the chart's pixels do not fill the image".into()))?;
            chart
                .save_with_format(path, image::ImageFormat::Png)
                .map_err(|e| fail(e.to_string()))
        }
        _ => Err(fail("the file must end in .svg or .png".into())),
    }
}

/// The time axis's unit for a run of `end` seconds: (divisor, name).
fn time_unit(end: f64) -> (f64, &'static str) {
    if end > 3.0 * 3600.0 {
        (3600.0, "hours")
    } else if end > 900.0 {
        (60.0, "minutes")
    } else {
        (1.0, "seconds")
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series<'_>],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2 - 10);
    let end = series
        .iter()
        .map(|s| s.outcome.end_us as f64 / 1e6)
        .fold(1.0, f64::max);
    let (unit, unit_name) = time_unit(end);
    let x_max = end / unit;
    let at = |us: u64| us as f64 / 1e6 / unit;

    let queued_max = series
        .iter()
        .flat_map(|s| s.outcome.timeline.iter().map(|p| p.queued_max))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..queued_max * 1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_desc("tasks queued")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                s.outcome
                    .timeline
                    .iter()
                    .map(|p| (at(p.at_us), p.queued_max as f64)),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let replicas_max = series
        .iter()
        .flat_map(|s| s.outcome.timeline.iter().map(|p| p.replicas))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..f64::from(replicas_max) * 1.1 + 0.5)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("time ({unit_name})"))
        .y_desc("replicas")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // Replicas hold between samples: draw steps.
        let mut points = Vec::with_capacity(s.outcome.timeline.len() * 2);
        let mut last: Option<i32> = None;
        for p in &s.outcome.timeline {
            if let Some(prev) = last {
                points.push((at(p.at_us), f64::from(prev)));
            }
            points.push((at(p.at_us), f64::from(p.replicas)));
            last = Some(p.replicas);
        }
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?;
    }
    Ok(())
}
