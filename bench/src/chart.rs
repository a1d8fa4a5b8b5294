//! A small SVG line chart: panels stacked over one time axis, each with its
//! own y axis and legend. Plain SVG 1.1, readable in any browser and on
//! GitHub, with no plotting dependency.

use std::fmt::Write as _;

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (seconds, value)
    pub points: Vec<(f64, f64)>,
}

/// One panel: a y quantity and its lines.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const GAP: f64 = 50.0;
const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];

/// A round axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * magnitude)
}

fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart of `panels` over time, titled `title`.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL + GAP) + 10.0;
    let x_max = nice_max(
        panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (n, panel) in panels.iter().enumerate() {
        let top = TOP + n as f64 * (PANEL + GAP);
        let bottom = top + PANEL;
        let y_max = nice_max(
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0, f64::max),
        );
        let x = |t: f64| LEFT + t / x_max * plot_w;
        let y = |v: f64| bottom - v / y_max * PANEL;
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(&panel.title)
        );
        for i in 0..=5 {
            let v = y_max * i as f64 / 5.0;
            let t = x_max * i as f64 / 5.0;
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y(v) + 4.0,
                label(v),
                yv = y(v),
            );
            let _ = writeln!(
                out,
                r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{top}" y2="{bottom}" stroke="#eee"/><text x="{xt:.1}" y="{}" text-anchor="middle">{}s</text>"##,
                bottom + 16.0,
                label(t),
                xt = x(t),
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="black"/>"#
        );
        for (i, series) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = series
                .points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            let ly = top + 16.0 + i as f64 * 16.0;
            let lx = WIDTH - RIGHT - 190.0;
            let _ = writeln!(
                out,
                r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{ly}">{}</text>"#,
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                lx + 24.0,
                escape(&series.name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(12_400.0), 20_000.0);
        assert_eq!(nice_max(0.21), 0.25);
    }

    #[test]
    fn a_chart_draws_every_series_and_escapes_names() {
        let panels = [
            Panel {
                title: "throughput (answers/s)".into(),
                series: vec![Series {
                    name: "a<b".into(),
                    points: vec![(0.0, 1.0), (1.0, 3.0)],
                }],
            },
            Panel {
                title: "latency (ms)".into(),
                series: vec![
                    Series {
                        name: "p50".into(),
                        points: vec![(0.0, 1.0)],
                    },
                    Series {
                        name: "p99".into(),
                        points: vec![(0.5, 9.0)],
                    },
                ],
            },
        ];
        let svg = svg("run & chart", &panels);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a&lt;b") && svg.contains("run &amp; chart"));
    }
}
