//! Rate charts as inline SVG, drawn on the server (no script, no CDN).

use std::fmt::Write as _;

use crate::html::rate;
use crate::sampler::RatePoint;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const PAD: f64 = 28.0;

/// Processed (solid) and failed (dashed) per second over the last hour:
/// the x axis spans the points there are, at least 5 minutes and at most
/// the hour.
pub(crate) fn rate_chart(points: &[RatePoint], now_ms: u64) -> String {
    let span = points
        .first()
        .map_or(0, |p| now_ms.saturating_sub(p.at_ms))
        .clamp(300_000, 3_600_000);
    let window = span as f64;
    let since = if span >= 3_600_000 {
        "1 h ago".to_owned()
    } else {
        format!("{} min ago", span.div_ceil(60_000))
    };
    let top = points
        .iter()
        .map(|p| p.processed.max(p.failed))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let x = |at_ms: u64| {
        let age = now_ms.saturating_sub(at_ms) as f64;
        PAD + (WIDTH - 2.0 * PAD) * (1.0 - (age / window).min(1.0))
    };
    let y = |v: f64| HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * (v / top);
    let line = |pick: fn(&RatePoint) -> f64| {
        let mut d = String::new();
        for (i, p) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(p.at_ms),
                y(pick(p))
            );
        }
        d
    };
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"jobs per second over the last hour\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"{t}\" font-size=\"10\">{max}/s</text>\
         <text x=\"2\" y=\"{b}\" font-size=\"10\">0</text>\
         <text x=\"{PAD}\" y=\"{lb}\" font-size=\"10\">{since}</text>\
         <text x=\"{nowx}\" y=\"{lb}\" font-size=\"10\">now</text>",
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
        t = PAD + 4.0,
        lb = HEIGHT - 8.0,
        nowx = WIDTH - PAD - 20.0,
        max = rate(Some(top)),
    );
    if points.len() >= 2 {
        let _ = write!(
            svg,
            "<path d=\"{}\" fill=\"none\" stroke=\"#2a7\" stroke-width=\"2\"><title>processed/s</title></path>\
             <path d=\"{}\" fill=\"none\" stroke=\"#c33\" stroke-width=\"2\" stroke-dasharray=\"4 3\"><title>failed/s</title></path>",
            line(|p| p.processed),
            line(|p| p.failed)
        );
    } else {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\">collecting: a point every 5 s</text>",
            WIDTH / 2.0 - 90.0,
            HEIGHT / 2.0
        );
    }
    svg.push_str(
        "<text x=\"480\" y=\"14\" font-size=\"11\" fill=\"#2a7\">— processed/s</text>\
         <text x=\"590\" y=\"14\" font-size=\"11\" fill=\"#c33\">- - failed/s</text></svg>",
    );
    svg
}
