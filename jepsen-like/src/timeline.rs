//! A Jepsen-style timeline of a history as a hand-written SVG picture.
//!
//! Top panel: one lane per client process, each operation a bar from its
//! invoke to its completion, green for `ok`, red for `fail`, yellow for
//! `info`. An operation that never completed is a faded yellow bar to the
//! end of the run. Bottom panel: the latency of every completed operation
//! against its invoke time, on a log scale. Fault windows are shaded across
//! both panels with their `fault` text above them. Every bar, point and
//! window has a `<title>`, which browsers show as a tooltip.
//!
//! The picture is 1,600 pixels wide whatever the run length, so bars of
//! fast operations in a long run are one pixel wide. The file grows with
//! the number of operations (about 250 bytes each).

use crate::checker::{fault_windows, kind_label, pair_operations, Operation, NEMESIS};
use crate::history::{Event, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const WIDTH: f64 = 1600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 90.0;
const LANE_HEIGHT: f64 = 18.0;
const LATENCY_HEIGHT: f64 = 240.0;
const PANEL_GAP: f64 = 50.0;
const LEGEND_HEIGHT: f64 = 60.0;
/// Rows of fault labels above the lanes, so labels of close windows do not
/// overlap.
const LABEL_ROWS: usize = 3;
/// Approximate width of one character of the 11 px label font, in pixels.
const CHAR_WIDTH: f64 = 6.2;
/// Maximum length in characters of a value, read list or error shown in a
/// tooltip.
/// Set values grow with the run, so full read lists would make the file huge.
const TITLE_DETAIL_CHARS: usize = 120;

const OK_COLOR: &str = "#4caf50";
const FAIL_COLOR: &str = "#e53935";
const INFO_COLOR: &str = "#fbc02d";
const FAULT_COLOR: &str = "#7e57c2";

/// Errors writing the timeline.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("failed to write the timeline to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Renders the timeline of `events` and writes it to `path` as SVG.
pub fn write_svg(path: &Path, events: &[Event]) -> Result<(), TimelineError> {
    std::fs::write(path, render_svg(events)).map_err(|source| TimelineError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders the timeline of `events` as an SVG document.
pub fn render_svg(events: &[Event]) -> String {
    let paired = pair_operations(events);
    let windows = fault_windows(events);
    let end_ms = events
        .iter()
        .map(|event| event.time_ms)
        .filter(|time| time.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);

    let lanes = lane_order(&paired.operations);
    let lanes_height = lanes.len().max(1) as f64 * LANE_HEIGHT;
    let latency_top = TOP + lanes_height + PANEL_GAP;
    let legend_top = latency_top + LATENCY_HEIGHT + 40.0;
    let height = legend_top + LEGEND_HEIGHT;
    let scale = Scale {
        end_ms,
        plot_width: WIDTH - LEFT - RIGHT,
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">Operations by process and latency over time ({} operations, {} fault windows)</text>"#,
        paired.operations.len(),
        windows.len()
    );

    // Lane backgrounds and names, under the fault shading and the bars.
    for (row, process) in lanes.iter().enumerate() {
        let y = TOP + row as f64 * LANE_HEIGHT;
        if row % 2 == 0 {
            let _ = writeln!(
                svg,
                r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{LANE_HEIGHT}" fill="#f4f4f4"/>"##,
                scale.plot_width
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + LANE_HEIGHT * 0.7,
            escape(process)
        );
    }
    // Fault windows: shading over both panels and a label above the lanes.
    let bottom = latency_top + LATENCY_HEIGHT;
    for (number, window) in windows.iter().enumerate() {
        let start = scale.x(window.start_ms);
        let end = scale.x(window.end_ms.unwrap_or(end_ms));
        let width = (end - start).max(1.0);
        let label_y = 42.0 + (number % LABEL_ROWS) as f64 * 14.0;
        let _ = writeln!(
            svg,
            r#"<g><title>{} ({:.1} s to {})</title><rect x="{start:.1}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="{FAULT_COLOR}" fill-opacity="0.15"/><line x1="{start:.1}" y1="{label_y:.1}" x2="{start:.1}" y2="{bottom:.1}" stroke="{FAULT_COLOR}" stroke-width="1"/><text x="{:.1}" y="{label_y:.1}" fill="{FAULT_COLOR}">{}</text></g>"#,
            escape(&window.label),
            window.start_ms / 1000.0,
            window.end_ms.map_or("the end".to_string(), |end| format!(
                "{:.1} s",
                end / 1000.0
            )),
            TOP - 4.0,
            bottom - TOP + 4.0,
            start + 3.0,
            escape(&truncate(
                &window.label,
                (WIDTH - RIGHT - start) / CHAR_WIDTH
            )),
        );
    }

    let lane_of: BTreeMap<&str, usize> = lanes
        .iter()
        .enumerate()
        .map(|(row, process)| (process.as_str(), row))
        .collect();
    for operation in &paired.operations {
        let Some(&row) = lane_of.get(operation.invoke.process.as_str()) else {
            continue;
        };
        let y = TOP + row as f64 * LANE_HEIGHT + 3.0;
        let start = scale.x(operation.invoke.time_ms);
        let end = scale.x(operation.completion.map_or(end_ms, |event| event.time_ms));
        let (color, opacity) = match operation.completion {
            None => (INFO_COLOR, 0.45),
            Some(_) => (outcome_color(operation.outcome()), 0.9),
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{start:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="{opacity}"><title>{}</title></rect>"#,
            (end - start).max(1.0),
            LANE_HEIGHT - 6.0,
            escape(&describe(operation))
        );
    }

    draw_time_axis(&mut svg, &scale, TOP + lanes_height, TOP);
    draw_latency_panel(&mut svg, &scale, &paired.operations, latency_top);
    draw_legend(&mut svg, legend_top);
    svg.push_str("</svg>\n");
    svg
}

/// Maps history time to the x coordinate.
struct Scale {
    end_ms: f64,
    plot_width: f64,
}

impl Scale {
    fn x(&self, time_ms: f64) -> f64 {
        LEFT + (time_ms / self.end_ms).clamp(0.0, 1.0) * self.plot_width
    }
}

/// Orders the client processes by name, with numeric suffixes compared as
/// numbers so `client-10` follows `client-9`.
fn lane_order(operations: &[Operation<'_>]) -> Vec<String> {
    let mut processes: Vec<String> = operations
        .iter()
        .map(|operation| operation.invoke.process.clone())
        .filter(|process| process != NEMESIS)
        .collect();
    processes.sort_by_key(|process| {
        let digits = process.trim_start_matches(|c: char| !c.is_ascii_digit());
        let prefix = &process[..process.len() - digits.len()];
        (
            prefix.to_string(),
            digits.parse::<u64>().unwrap_or(u64::MAX),
            process.clone(),
        )
    });
    processes.dedup();
    processes
}

fn draw_time_axis(svg: &mut String, scale: &Scale, y: f64, grid_top: f64) {
    let step_ms = tick_step_ms(scale.end_ms);
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="black"/>"#,
        LEFT + scale.plot_width
    );
    let mut tick = 0.0;
    while tick <= scale.end_ms + 1e-9 {
        let x = scale.x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{grid_top:.1}" x2="{x:.1}" y2="{y:.1}" stroke="#bbbbbb" stroke-width="0.5"/><line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y + 5.0,
            y + 17.0,
            format_seconds(tick)
        );
        tick += step_ms;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">time since the run started (s)</text>"#,
        LEFT + scale.plot_width,
        y + 32.0
    );
}

fn draw_latency_panel(svg: &mut String, scale: &Scale, operations: &[Operation<'_>], top: f64) {
    let latencies: Vec<(&Operation<'_>, f64)> = operations
        .iter()
        .filter_map(|operation| {
            let completion = operation.completion?;
            Some((
                operation,
                (completion.time_ms - operation.invoke.time_ms).max(0.0),
            ))
        })
        .collect();
    let floor = 0.1f64;
    let max = latencies
        .iter()
        .map(|(_, latency)| *latency)
        .fold(floor * 10.0, f64::max);
    let decades_low = floor.log10().floor();
    let decades_high = max.log10().ceil();
    let bottom = top + LATENCY_HEIGHT;
    let y_of = |latency_ms: f64| {
        let position = (latency_ms.max(floor).log10() - decades_low) / (decades_high - decades_low);
        bottom - position * LATENCY_HEIGHT
    };

    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-size="13" font-weight="bold">Latency from invoke to completion (ms, log scale)</text>"#,
        top - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{LATENCY_HEIGHT}" fill="none" stroke="black"/>"#,
        scale.plot_width
    );
    let mut exponent = decades_low;
    while exponent <= decades_high {
        let value = 10f64.powf(exponent);
        let y = y_of(value);
        let label = if value < 1.0 {
            format!("{value:.1}")
        } else {
            format!("{value:.0}")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#cccccc" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + scale.plot_width,
            LEFT - 6.0,
            y + 4.0
        );
        exponent += 1.0;
    }

    for (operation, latency) in latencies {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}" fill-opacity="0.7"><title>{}</title></circle>"#,
            scale.x(operation.invoke.time_ms),
            y_of(latency),
            outcome_color(operation.outcome()),
            escape(&describe(operation))
        );
    }
    draw_time_axis(svg, scale, bottom, top);
}

fn draw_legend(svg: &mut String, top: f64) {
    let items = [
        (OK_COLOR, "1", "ok"),
        (FAIL_COLOR, "1", "fail (not applied)"),
        (INFO_COLOR, "1", "info (indeterminate)"),
        (INFO_COLOR, "0.45", "never completed"),
        (FAULT_COLOR, "0.15", "fault window"),
    ];
    let mut x = LEFT;
    for (color, opacity, label) in items {
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="18" height="12" fill="{color}" fill-opacity="{opacity}" stroke="{color}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            top + 8.0,
            x + 24.0,
            top + 18.0
        );
        x += 24.0 + label.len() as f64 * CHAR_WIDTH + 30.0;
    }
}

fn describe(operation: &Operation<'_>) -> String {
    let completion = operation.completion;
    let mut text = format!(
        "{} {} {}",
        operation.invoke.process,
        kind_label(operation.kind),
        operation.key
    );
    if let Some(value) = operation.value() {
        let value = format!("{value:?}");
        let _ = write!(text, " {}", truncate(&value, TITLE_DETAIL_CHARS as f64));
    }
    let outcome = match (completion, operation.outcome()) {
        (None, _) => "never completed",
        (Some(_), Outcome::Ok) => "ok",
        (Some(_), Outcome::Fail) => "fail",
        (Some(_), _) => "info",
    };
    let _ = write!(text, ": {outcome}");
    if let Some(completion) = completion {
        let _ = write!(
            text,
            " in {:.1} ms (events {} to {})",
            completion.time_ms - operation.invoke.time_ms,
            operation.invoke.index,
            completion.index
        );
        if let Some(read) = &completion.read {
            let read = format!("{read:?}");
            let _ = write!(
                text,
                ", read {}",
                truncate(&read, TITLE_DETAIL_CHARS as f64)
            );
        }
        if let Some(error) = &completion.error {
            let _ = write!(
                text,
                ", error: {}",
                truncate(error, TITLE_DETAIL_CHARS as f64)
            );
        }
    }
    text
}

fn outcome_color(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => OK_COLOR,
        Outcome::Fail => FAIL_COLOR,
        Outcome::Info | Outcome::Invoke => INFO_COLOR,
    }
}

/// Picks a tick step from 1-2-5 multiples so the axis has at most 20 ticks.
fn tick_step_ms(end_ms: f64) -> f64 {
    let mut magnitude = 100.0;
    while magnitude < 1e12 {
        for multiplier in [1.0, 2.0, 5.0] {
            let step = magnitude * multiplier;
            if end_ms / step <= 20.0 {
                return step;
            }
        }
        magnitude *= 10.0;
    }
    end_ms
}

fn format_seconds(time_ms: f64) -> String {
    let seconds = time_ms / 1000.0;
    if seconds.fract().abs() < 1e-9 {
        format!("{seconds:.0}")
    } else {
        format!("{seconds:.1}")
    }
}

fn truncate(text: &str, max_chars: f64) -> String {
    let max = max_chars.max(4.0) as usize;
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Escapes text for SVG element content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            _ => escaped.push(c),
        }
    }
    escaped
}
