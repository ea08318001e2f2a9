//! An SVG bar chart of median latency per query type, one bar per engine
//! (run report) in each type's group, on a logarithmic axis: TSBS types
//! span milliseconds to seconds, and a linear axis would hide the fast
//! ones.

use std::fmt::Write as _;

use super::run::RunReport;

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];
const LABEL_WIDTH: f64 = 190.0;
const PLOT_WIDTH: f64 = 560.0;
const VALUE_WIDTH: f64 = 90.0;
const BAR_HEIGHT: f64 = 14.0;
const GROUP_GAP: f64 = 8.0;
const TOP: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the chart for one or more reports; types appear in the order of
/// the first report, then any others' extra types.
pub fn render_svg(reports: &[RunReport]) -> String {
    let mut types: Vec<String> = Vec::new();
    for r in reports {
        for t in &r.types {
            if !types.contains(&t.query_type) {
                types.push(t.query_type.clone());
            }
        }
    }
    let median = |r: &RunReport, ty: &str| {
        r.types
            .iter()
            .find(|t| t.query_type == ty)
            .map(|t| t.median_ms)
    };
    let values: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.types.iter().map(|t| t.median_ms))
        .filter(|v| *v > 0.0)
        .collect();
    // Whole decades around the data.
    let lo = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1e-3)
        .mul_add(0.5, 0.0)
        .log10()
        .floor();
    let hi = values
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-3)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |ms: f64| LABEL_WIDTH + (ms.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * PLOT_WIDTH;

    let group_height = reports.len() as f64 * BAR_HEIGHT + GROUP_GAP;
    let legend_height = 20.0 * reports.len() as f64;
    let plot_bottom = TOP + types.len() as f64 * group_height;
    let height = plot_bottom + 40.0 + legend_height;
    let width = LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" font-weight="bold">Median query latency (ms, log scale)</text>"#,
        LABEL_WIDTH
    );
    // Decade grid lines with labels.
    let mut d = lo;
    while d <= hi + 1e-9 {
        let gx = x(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{plot_bottom}" stroke="#ddd"/><text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            TOP - 8.0,
            plot_bottom + 15.0,
            decade_label(d)
        );
        d += 1.0;
    }
    for (ti, ty) in types.iter().enumerate() {
        let gy = TOP + ti as f64 * group_height;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            gy + group_height / 2.0,
            escape(ty)
        );
        for (ri, r) in reports.iter().enumerate() {
            let Some(ms) = median(r, ty) else { continue };
            let y = gy + ri as f64 * BAR_HEIGHT;
            let w = (x(ms) - LABEL_WIDTH).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LABEL_WIDTH}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {} {:.2} ms</title></rect><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                BAR_HEIGHT - 2.0,
                COLORS[ri % COLORS.len()],
                escape(&r.engine),
                escape(ty),
                ms,
                LABEL_WIDTH + w + 4.0,
                y + BAR_HEIGHT - 4.0,
                format_ms(ms)
            );
        }
    }
    for (ri, r) in reports.iter().enumerate() {
        let ly = plot_bottom + 35.0 + ri as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="{LABEL_WIDTH}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{:.1}">{} ({} workers, scale {}, {:.1} queries/s)</text>"#,
            ly - 10.0,
            COLORS[ri % COLORS.len()],
            LABEL_WIDTH + 18.0,
            ly,
            escape(&r.engine),
            r.workers,
            r.scale,
            r.queries_per_second
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `1000`, `1`, `0.01`: a decade without trailing digits.
fn decade_label(exponent: f64) -> String {
    let decimals = (-exponent).max(0.0) as usize;
    format!("{:.*}", decimals, 10f64.powf(exponent))
}

fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsbs::run::TypeStats;
    use std::time::Duration;

    fn report(engine: &str, medians: &[(&str, u64)]) -> RunReport {
        let types: Vec<TypeStats> = medians
            .iter()
            .map(|(t, ms)| {
                TypeStats::from_latencies(
                    t,
                    &[Duration::from_millis(*ms)],
                    1,
                    Duration::from_secs(1),
                )
            })
            .collect();
        RunReport {
            engine: engine.into(),
            workers: 2,
            scale: 10,
            seed: 1,
            overall: types[0].clone(),
            types,
            queries_per_second: 3.0,
            mismatches: None,
            reference: None,
        }
    }

    #[test]
    fn bars_are_log_scaled_and_grouped_per_engine() {
        let a = report("strata", &[("lastpoint", 10), ("high-cpu-1", 1000)]);
        let b = report("other <db>", &[("lastpoint", 100)]);
        let svg = render_svg(&[a, b]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("other &lt;db&gt;"), "labels are escaped");
        // Three bars: two for strata, one for the other engine.
        assert_eq!(svg.matches("<rect x=\"190\" y=").count(), 3 + 2);
        // The axis runs from 1 ms to 1000 ms: the 100 ms bar is two thirds
        // as long as the 1000 ms one.
        let width = |title: &str| -> f64 {
            let i = svg.find(title).unwrap();
            let before = &svg[..i];
            let w = before.rfind("width=\"").unwrap();
            before[w + 7..].split('"').next().unwrap().parse().unwrap()
        };
        let w100 = width("<title>other &lt;db&gt;: lastpoint");
        let w1000 = width("<title>strata: high-cpu-1");
        assert!((w1000 / w100 - 1.5).abs() < 0.01, "{w100} {w1000}");
    }
}
