//! The PNG timeline: success rate per replica over time (top), the applied version per replica
//! (bottom), faults as shaded bands and leader changes as vertical lines on both.
//!
//! Labels need a font; plotters' `ab_glyph` backend draws with one we load ourselves
//! (DejaVu Sans, from Debian's fonts-dejavu-core, which tests/setup installs), so nothing
//! depends on a system font lookup. Without the font the picture is drawn without text.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;

use crate::checks::Leadership;
use crate::record::{BUCKET_MS, Observations};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT: &str = "chaos-sans";

/// Registers the label font once; whether labels can be drawn.
fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const REPLICA_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn color(r: usize) -> RGBColor {
    REPLICA_COLORS[r % REPLICA_COLORS.len()]
}

/// Success rate per replica per second: `(t, rate)` points, seconds with no attempts skipped.
pub fn success_series(obs: &Observations) -> Vec<Vec<(f64, f64)>> {
    let per_second = (1000 / BUCKET_MS) as usize;
    (0..obs.replicas)
        .map(|r| {
            obs.requests
                .chunks(per_second)
                .enumerate()
                .filter_map(|(s, chunk)| {
                    let (ok, total) = chunk.iter().fold((0, 0), |(ok, total), row| {
                        (ok + row[r].ok, total + row[r].total())
                    });
                    (total > 0).then(|| (s as f64 + 0.5, ok as f64 / total as f64))
                })
                .collect()
        })
        .collect()
}

/// Draws the timeline to `path` (PNG).
pub fn draw(path: &Path, obs: &Observations, leaderships: &[Leadership]) -> anyhow::Result<()> {
    let labels = font_available();
    let end = obs
        .duration()
        .max(obs.samples.iter().map(|s| s.t).fold(0.0, f64::max))
        .max(1.0);
    let max_version = obs
        .samples
        .iter()
        .map(|s| s.version)
        .max()
        .unwrap_or(0)
        .max(1) as f64;

    let root = BitMapBackend::new(path, (1400, 800)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let (top, bottom) = root.split_vertically(480);

    let font = |size| (FONT, size).into_font();
    let leader_starts: Vec<(f64, usize)> =
        leaderships.iter().map(|l| (l.start, l.replica)).collect();

    // Top: success rate.
    let mut chart = ChartBuilder::on(&top);
    chart
        .margin(12)
        .x_label_area_size(if labels { 36 } else { 8 })
        .y_label_area_size(if labels { 60 } else { 8 });
    if labels {
        chart.caption(
            "Portico chaos run: request success rate per replica, faults shaded, leader changes dashed",
            font(20),
        );
    }
    let mut chart = chart
        .build_cartesian_2d(0.0..end, 0.0..1.05)
        .context("chart")?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh();
    if labels {
        mesh.x_desc("time (s)")
            .y_desc("success rate")
            .label_style(font(14))
            .axis_desc_style(font(15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().context("mesh")?;
    draw_faults(&mut chart, obs, 1.05)?;
    draw_leader_changes(&mut chart, &leader_starts, 1.05)?;
    for (r, points) in success_series(obs).into_iter().enumerate() {
        let style = color(r).stroke_width(2);
        let series = chart
            .draw_series(LineSeries::new(points, style))
            .context("series")?;
        if labels {
            series.label(format!("replica {r}")).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color(r).stroke_width(2))
            });
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .label_font(font(14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .context("legend")?;
    }

    // Bottom: applied version.
    let mut chart = ChartBuilder::on(&bottom);
    chart
        .margin(12)
        .x_label_area_size(if labels { 36 } else { 8 })
        .y_label_area_size(if labels { 60 } else { 8 });
    let mut chart = chart
        .build_cartesian_2d(0.0..end, 0.0..max_version * 1.05)
        .context("chart")?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh();
    if labels {
        mesh.x_desc("time (s)")
            .y_desc("applied version")
            .label_style(font(14))
            .axis_desc_style(font(15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().context("mesh")?;
    draw_faults(&mut chart, obs, max_version * 1.05)?;
    draw_leader_changes(&mut chart, &leader_starts, max_version * 1.05)?;
    for r in 0..obs.replicas {
        let points: Vec<(f64, f64)> = obs
            .samples
            .iter()
            .filter(|s| s.replica == r)
            .map(|s| (s.t, s.version as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color(r).stroke_width(2)))
            .context("series")?;
    }
    if labels {
        for f in &obs.faults {
            chart
                .draw_series(std::iter::once(Text::new(
                    f.name.clone(),
                    (f.start, max_version * 1.02),
                    font(11).transform(FontTransform::Rotate90),
                )))
                .context("fault label")?;
        }
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_faults(chart: &mut Chart<'_, '_>, obs: &Observations, top: f64) -> anyhow::Result<()> {
    chart
        .draw_series(obs.faults.iter().map(|f| {
            Rectangle::new(
                [(f.start, 0.0), (f.end.max(f.start + 0.1), top)],
                RGBColor(220, 50, 47).mix(0.15).filled(),
            )
        }))
        .context("fault bands")?;
    Ok(())
}

fn draw_leader_changes(
    chart: &mut Chart<'_, '_>,
    starts: &[(f64, usize)],
    top: f64,
) -> anyhow::Result<()> {
    for &(t, r) in starts {
        let mut y = 0.0;
        let step = top / 40.0;
        let mut dashes = Vec::new();
        while y < top {
            dashes.push(PathElement::new(
                vec![(t, y), (t, (y + step / 2.0).min(top))],
                color(r).stroke_width(2),
            ));
            y += step;
        }
        chart.draw_series(dashes).context("leader change")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FaultWindow, Protocol, Sample};

    #[test]
    fn draws_a_png_with_faults_leaders_and_versions() {
        let mut obs = Observations::new(3);
        for i in 0..300 {
            let t = i as f64 * 0.1;
            for r in 0..3 {
                let down = r == 1 && (10.0..14.0).contains(&t);
                obs.attempt(t, r, Protocol::ALL[r], !down);
            }
            obs.client_outcome(t, true);
            if i % 5 == 0 {
                for r in 0..3 {
                    obs.samples.push(Sample {
                        t,
                        replica: r,
                        incarnation: 0,
                        wiped: false,
                        is_leader: (r == 0 && t < 12.0) || (r == 2 && t >= 13.0),
                        epoch: if t < 12.0 { 1 } else { 2 },
                        version: i / 10,
                        highest_epoch: 1,
                    });
                }
            }
        }
        obs.faults.push(FaultWindow {
            name: "sigkill-follower".into(),
            targets: vec![1],
            start: 10.0,
            end: 14.0,
            ..Default::default()
        });
        let l = crate::checks::leaderships(&obs.samples);
        assert_eq!(
            success_series(&obs)[1]
                .iter()
                .filter(|p| p.1 == 0.0)
                .count(),
            4
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.png");
        draw(&path, &obs, &l).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(
            bytes.len() > 5_000,
            "a picture, not an empty file: {}",
            bytes.len()
        );
    }
}
