//! Drawing a [`Timeline`] with plotters: the chart on the left, the legend on the right.

use bytesize::ByteSize;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Span, Timeline, HIGHLIGHTED};

const WIDTH: u32 = 1600;
const HEIGHT: u32 = 900;
const LEGEND_WIDTH: u32 = 430;
/// Most x positions drawn: longer traces are bucketed, each bucket drawn at its event of
/// highest live memory, so no peak is lost.
const MAX_POINTS: usize = 1200;

/// Colours of the highlighted allocations (no red: red is reserved memory).
const PALETTE: [RGBColor; HIGHLIGHTED] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const OTHER: RGBColor = RGBColor(200, 200, 200);
const RESERVED: RGBColor = RGBColor(214, 39, 40);
const LIVE: RGBColor = RGBColor(30, 30, 30);

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

/// A byte axis in one unit chosen from its largest value.
struct Unit {
    bytes: f64,
    name: &'static str,
}

impl Unit {
    fn for_max(max: u64) -> Unit {
        let (bytes, name) = match max {
            m if m >= 1 << 30 => (1u64 << 30, "GiB"),
            m if m >= 1 << 20 => (1 << 20, "MiB"),
            m if m >= 1 << 10 => (1 << 10, "KiB"),
            _ => (1, "B"),
        };
        Unit {
            bytes: bytes as f64,
            name,
        }
    }

    fn of(&self, bytes: u64) -> f64 {
        bytes as f64 / self.bytes
    }
}

/// The events of `range` drawn: every one when they are few, else per bucket the event
/// of highest live memory, with the bucket's highest reserved memory.
fn sample(timeline: &Timeline, range: std::ops::Range<usize>) -> Vec<(usize, u64)> {
    let n = range.len();
    let buckets = n.min(MAX_POINTS);
    (0..buckets)
        .map(|k| {
            let from = range.start + k * n / buckets;
            let to = (range.start + (k + 1) * n / buckets).max(from + 1);
            let at = (from..to)
                .max_by_key(|&i| (timeline.live[i], std::cmp::Reverse(i)))
                .unwrap_or(from);
            let reserved = timeline.reserved[from..to].iter().copied().max().unwrap_or(0);
            (at, reserved)
        })
        .collect()
}

pub(crate) fn svg(timeline: &Timeline) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(timeline, &root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// What both panels draw: the trace, its peaks, and the allocations picked out.
struct Scene<'t> {
    timeline: &'t Timeline,
    unit: Unit,
    /// Highlighted allocations with their colour index, in the order they were made
    /// (the stacking order, as PyTorch's viewer stacks them).
    stacked: Vec<(usize, &'t Span)>,
    peak_at: usize,
    peak_live: u64,
    reserved_at: usize,
    peak_reserved: u64,
}

impl Scene<'_> {
    /// Bytes of highlighted allocations alive after `event`, of those stacked before
    /// `order` (all of them for `stacked.len()`).
    fn highlighted_below(&self, event: usize, order: usize) -> u64 {
        self.stacked[..order]
            .iter()
            .filter(|(_, s)| s.start <= event && event < s.end)
            .map(|(_, s)| s.size)
            .sum()
    }

    /// Live bytes after `event` in no highlighted allocation.
    fn other(&self, event: usize) -> u64 {
        self.timeline.live[event].saturating_sub(self.highlighted_below(event, self.stacked.len()))
    }
}

fn draw<DB: DrawingBackend>(timeline: &Timeline, root: &DrawingArea<DB, plotters::coord::Shift>) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(fail)?;
    let (charts, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let (whole_area, zoom_area) = charts.split_vertically(HEIGHT * 57 / 100);

    let events = timeline.live.len();
    let (peak_at, peak_live) = timeline.peak_live();
    let (reserved_at, peak_reserved) = timeline.peak_reserved();
    let mut alive = timeline.alive_at_peak();
    let alive_count = alive.len();
    let alive_bytes: u64 = alive.iter().map(|s| s.size).sum();
    alive.truncate(HIGHLIGHTED);
    let mut stacked: Vec<(usize, &Span)> = alive.iter().enumerate().map(|(c, s)| (c, *s)).collect();
    stacked.sort_by_key(|(_, s)| s.start);
    let scene = Scene {
        timeline,
        unit: Unit::for_max(peak_live.max(peak_reserved).max(1)),
        stacked,
        peak_at,
        peak_live,
        reserved_at,
        peak_reserved,
    };

    panel(
        &scene,
        &whole_area,
        0..events,
        format!("{}: memory over {} allocator events", timeline.name, events),
    )?;
    // The peak close up: short-lived allocations that make it are a sliver at full scale.
    // The window spans the short-lived highlighted allocations (alive for at most a
    // hundredth of the trace), with a quarter of that width again on each side.
    let short = (events / 100).max(1);
    let (mut from, mut to) = (peak_at, peak_at + 1);
    for (_, span) in &scene.stacked {
        if span.end - span.start <= short {
            from = from.min(span.start);
            to = to.max(span.end);
        }
    }
    let margin = ((to - from) / 4).max(20);
    let zoom = from.saturating_sub(margin)..(to + margin).min(events);
    panel(
        &scene,
        &zoom_area,
        zoom.clone(),
        format!(
            "close up: events {} to {} around the peak of live memory",
            zoom.start, zoom.end
        ),
    )?;

    // The legend: what the peak is made of, then the lines.
    let text = |y: i32, x: i32, size_px: u32, words: String, colour: RGBColor| {
        legend_area.draw(&Text::new(
            words,
            (x, y),
            ("sans-serif", size_px).into_font().color(&colour),
        ))
    };
    let grey = RGBColor(90, 90, 90);
    let held: u64 = alive.iter().map(|s| s.size).sum();
    let mut y = 30;
    text(y, 12, 20, "At the peak of live memory".into(), LIVE).map_err(fail)?;
    y += 30;
    let lines = [
        format!("{} after event {}:", size(peak_live), peak_at),
        format!("{alive_count} allocations alive, the {} largest", alive.len()),
        format!(
            "hold {} ({:.0}%), drawn in colour:",
            size(held),
            held as f64 * 100.0 / alive_bytes.max(1) as f64
        ),
    ];
    for line in lines {
        text(y, 12, 16, line, LIVE).map_err(fail)?;
        y += 22;
    }
    y += 12;
    for (colour, span) in alive.iter().enumerate() {
        legend_area
            .draw(&Rectangle::new([(12, y), (34, y + 16)], PALETTE[colour].filled()))
            .map_err(fail)?;
        text(
            y,
            44,
            16,
            format!("{}   allocation #{}", size(span.size), span.id),
            LIVE,
        )
        .map_err(fail)?;
        let freed = if span.end >= events {
            "never freed".to_string()
        } else {
            format!("freed at event {}", span.end)
        };
        text(
            y + 19,
            44,
            14,
            format!("stream {}, made at event {}, {freed}", span.stream, span.start),
            grey,
        )
        .map_err(fail)?;
        y += 46;
    }
    legend_area
        .draw(&Rectangle::new([(12, y), (34, y + 16)], OTHER.filled()))
        .map_err(fail)?;
    text(y, 44, 16, "every other allocation".into(), LIVE).map_err(fail)?;
    y += 40;
    let ratio = peak_reserved as f64 / peak_live.max(1) as f64;
    let swatches = [
        (LIVE, 1, "live: requested bytes, from the trace".to_string()),
        (RESERVED, 3, "reserved by gpuhal's caching pool".to_string()),
    ];
    for (colour, width, words) in swatches {
        legend_area
            .draw(&PathElement::new(
                vec![(12, y + 8), (34, y + 8)],
                colour.stroke_width(width),
            ))
            .map_err(fail)?;
        text(y, 44, 16, words, LIVE).map_err(fail)?;
        y += 26;
    }
    text(
        y,
        44,
        14,
        format!(
            "peak {} after event {reserved_at}, {ratio:.3} × peak live",
            size(peak_reserved)
        ),
        grey,
    )
    .map_err(fail)?;
    Ok(())
}

/// One chart of events `range`: the stacked bands, the live and reserved lines, and the
/// peaks that fall inside it.
fn panel<DB: DrawingBackend>(
    scene: &Scene<'_>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    range: std::ops::Range<usize>,
    caption: String,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let timeline = scene.timeline;
    let unit = &scene.unit;
    let points = sample(timeline, range.clone());
    let top = unit.of(scene.peak_live.max(scene.peak_reserved).max(1)) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(range.start as f64..range.end.max(range.start + 1) as f64, 0f64..top)
        .map_err(fail)?;
    let unit_name = unit.name;
    chart
        .configure_mesh()
        .x_desc("allocator event (alloc or free)")
        .y_desc(format!("bytes ({unit_name})"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(fail)?;

    // Values hold from their event to the next one drawn: steps, not slopes.
    let next_x: Vec<f64> = (0..points.len())
        .map(|k| points.get(k + 1).map_or(range.end as f64, |&(at, _)| at as f64))
        .collect();
    let other: Vec<Step> = points
        .iter()
        .zip(&next_x)
        .map(|(&(at, _), &to)| Step {
            from: at as f64,
            to,
            low: 0.0,
            high: unit.of(scene.other(at)),
        })
        .collect();
    chart.draw_series(std::iter::once(band(&other, OTHER))).map_err(fail)?;
    for (order, (colour, span)) in scene.stacked.iter().enumerate() {
        let steps: Vec<Step> = points
            .iter()
            .zip(&next_x)
            .filter(|((at, _), _)| span.start <= *at && *at < span.end)
            .map(|(&(at, _), &to)| {
                let below = scene.other(at) + scene.highlighted_below(at, order);
                Step {
                    from: at as f64,
                    to,
                    low: unit.of(below),
                    high: unit.of(below + span.size),
                }
            })
            .collect();
        if !steps.is_empty() {
            chart
                .draw_series(std::iter::once(band(&steps, PALETTE[*colour])))
                .map_err(fail)?;
        }
    }
    let stairs = |values: Vec<f64>| -> Vec<(f64, f64)> {
        points
            .iter()
            .zip(&next_x)
            .zip(values)
            .flat_map(|((&(at, _), &to), v)| [(at as f64, v), (to, v)])
            .collect()
    };
    let live = stairs(points.iter().map(|&(at, _)| unit.of(timeline.live[at])).collect());
    chart
        .draw_series(LineSeries::new(live, LIVE.stroke_width(1)))
        .map_err(fail)?;
    let reserved = stairs(points.iter().map(|&(_, reserved)| unit.of(reserved)).collect());
    chart
        .draw_series(LineSeries::new(reserved, RESERVED.stroke_width(3)))
        .map_err(fail)?;

    // The peaks: a dashed line down to the axis, a dot and what it is.
    let marks = [
        (
            scene.peak_at,
            scene.peak_live,
            LIVE,
            format!("peak live {}", size(scene.peak_live)),
        ),
        (
            scene.reserved_at,
            scene.peak_reserved,
            RESERVED,
            format!("peak reserved {}", size(scene.peak_reserved)),
        ),
    ];
    for (index, (at, bytes, colour, label)) in marks.into_iter().enumerate() {
        if !range.contains(&at) {
            continue;
        }
        let (x, y) = (at as f64, unit.of(bytes));
        let dashes = (0..40).map(|i| {
            let from = y * i as f64 / 40.0;
            PathElement::new(vec![(x, from), (x, from + y / 80.0)], colour.stroke_width(1))
        });
        chart.draw_series(dashes).map_err(fail)?;
        chart
            .draw_series(std::iter::once(Circle::new((x, y), 6, colour.filled())))
            .map_err(fail)?;
        let right_half = (at - range.start) * 2 > range.len();
        let anchor = Pos::new(if right_half { HPos::Right } else { HPos::Left }, VPos::Bottom);
        let style = ("sans-serif", 18).into_font().color(&colour).pos(anchor);
        let shift = if right_half { -10 } else { 10 };
        // Reserved above live: their dots can be close together.
        let lift = if index == 1 { -12 } else { -8 };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((x, y)) + Text::new(label, (shift, lift), style),
            ))
            .map_err(fail)?;
    }
    Ok(())
}

/// One drawn value of a band: from one event drawn to the next, between two heights.
struct Step {
    from: f64,
    to: f64,
    low: f64,
    high: f64,
}

/// A filled band over consecutive steps.
fn band(steps: &[Step], colour: RGBColor) -> Polygon<(f64, f64)> {
    let mut outline: Vec<(f64, f64)> = steps.iter().flat_map(|s| [(s.from, s.high), (s.to, s.high)]).collect();
    outline.extend(steps.iter().rev().flat_map(|s| [(s.to, s.low), (s.from, s.low)]));
    Polygon::new(outline, colour.mix(0.85).filled())
}
