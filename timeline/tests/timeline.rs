//! The timeline of a small fixed trace: what it computes and the picture it draws.

use gpuhal_hal::trace::{Trace, TraceEvent};
use gpuhal_hal::PoolConfig;
use gpuhal_timeline::Timeline;

const MIB: u64 = 1 << 20;

/// Weights made first and kept; a step's activations grow, two large temporaries make
/// the peak, and everything but the weights is freed.
fn small_trace() -> Trace {
    let events = vec![
        TraceEvent::alloc(0, 64 * MIB, 0),
        TraceEvent::alloc(1, 8 * MIB, 0),
        TraceEvent::alloc(2, 16 * MIB, 0),
        TraceEvent::alloc(3, 96 * MIB, 0),
        TraceEvent::alloc(4, 96 * MIB, 1),
        TraceEvent::free(3, 96 * MIB, 0),
        TraceEvent::free(4, 96 * MIB, 1),
        TraceEvent::free(2, 16 * MIB, 0),
        TraceEvent::alloc(5, 12 * MIB, 0),
        TraceEvent::free(5, 12 * MIB, 0),
        TraceEvent::free(1, 8 * MIB, 0),
    ];
    Trace {
        header: serde_json::json!({ "trace": "small" }),
        events,
    }
}

#[test]
fn live_follows_the_trace_and_the_peak_is_what_made_it() {
    let timeline = Timeline::from_trace(&small_trace(), PoolConfig::default()).unwrap();
    assert_eq!(timeline.live.len(), 11);
    assert_eq!(timeline.peak_live(), (4, 280 * MIB));
    assert_eq!(*timeline.live.last().unwrap(), 64 * MIB, "the weights are never freed");
    for (live, reserved) in timeline.live.iter().zip(&timeline.reserved) {
        assert!(reserved >= live, "reserved {reserved} under live {live}");
    }
    let alive: Vec<u64> = timeline.alive_at_peak().iter().map(|s| s.id).collect();
    assert_eq!(alive, vec![3, 4, 0, 2, 1], "largest first, then by when they were made");
    let never_freed = &timeline.spans[0];
    assert_eq!((never_freed.start, never_freed.end), (0, 11));
}

#[test]
fn the_picture_of_a_small_trace_is_the_same_every_time() {
    let timeline = Timeline::from_trace(&small_trace(), PoolConfig::default()).unwrap();
    let svg = timeline.to_svg().unwrap();
    assert!(svg.contains("peak live 280.0 MiB"), "the peak is labelled");
    assert!(svg.contains("allocation #3"), "the legend names the largest allocation");
    insta::assert_snapshot!("small_trace_svg", svg);
}
