//! PyTorch memory snapshots read as traces: what `torch.cuda.memory._dump_snapshot` writes
//! after `_record_memory_history`, so a PyTorch user can replay their own workload through
//! gpuhal's allocator and compare it with what PyTorch reserved.
//!
//! The snapshot is a pickled dict. Its `device_traces` list, one list per device, holds every
//! allocator action in order: `alloc`, `free_requested` (the tensor died), `free_completed`
//! (its stream-ordered free ran), `segment_alloc` / `segment_free` (memory taken from and
//! given back to the device, `segment_map` / `segment_unmap` for expandable segments), and
//! others that do not change memory. Each has `addr`, `size` and `stream`.
//!
//! Mapping: an `alloc` starts an allocation (its id is the order it was seen in); the free
//! is the `free_requested` (a gpuhal buffer is returned when dropped, like a tensor), or the
//! `free_completed` of an older snapshot that records only that. Streams are numbered in the
//! order they appear, the first one 0. The header carries PyTorch's own peak of device
//! memory, from the segment actions, as `torch_peak_reserved`.

use std::collections::HashMap;

use serde_pickle::{DeOptions, HashableValue, Value};

use crate::error::{Error, Result};
use crate::trace::{Trace, TraceEvent};

/// The snapshot of device `device`'s actions in `bytes` as a trace named `name`.
pub fn parse(bytes: &[u8], name: &str, device: usize) -> Result<Trace> {
    let bad = |why: String| Error::Trace {
        context: format!("reading the PyTorch memory snapshot {name}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let snapshot = serde_pickle::value_from_slice(bytes, DeOptions::new().replace_unresolved_globals())
        .map_err(|err| bad(format!("not a pickle gpuhal can read: {err}")))?;
    let traces = field(&snapshot, "device_traces")
        .and_then(as_list)
        .ok_or_else(|| bad("no `device_traces` list: was _record_memory_history on?".into()))?;
    let actions = traces.get(device).and_then(as_list).ok_or_else(|| {
        bad(format!(
            "no actions for device {device} (the snapshot has {} devices)",
            traces.len()
        ))
    })?;

    let mut events = Vec::new();
    let mut live: HashMap<u64, (u64, u64, u64)> = HashMap::new(); // address -> (id, size, stream)
    let mut streams: HashMap<i64, u64> = HashMap::new();
    let (mut next_id, mut reserved, mut peak_reserved) = (0u64, 0u64, 0u64);
    for (index, action) in actions.iter().enumerate() {
        let kind = field(action, "action").and_then(as_str).unwrap_or_default();
        let number = |key: &str| {
            field(action, key)
                .and_then(as_i64)
                .ok_or_else(|| bad(format!("action {index} ({kind}) has no integer `{key}`")))
        };
        match kind {
            "alloc" => {
                let address = number("addr")? as u64;
                let size = number("size")? as u64;
                let stream_count = streams.len() as u64;
                let stream = *streams.entry(number("stream")?).or_insert(stream_count);
                let id = next_id;
                next_id += 1;
                live.insert(address, (id, size, stream));
                events.push(TraceEvent::alloc(id, size, stream));
            }
            "free_requested" | "free_completed" | "free" => {
                // After a free_requested the address is no longer live, so its
                // free_completed finds nothing and adds nothing.
                if let Some((id, size, stream)) = live.remove(&(number("addr")? as u64)) {
                    events.push(TraceEvent::free(id, size, stream));
                }
            }
            "segment_alloc" | "segment_map" => {
                reserved += number("size")? as u64;
                peak_reserved = peak_reserved.max(reserved);
            }
            "segment_free" | "segment_unmap" => reserved = reserved.saturating_sub(number("size")? as u64),
            _ => {}
        }
    }
    let header = serde_json::json!({
        "trace": name,
        "source": "PyTorch memory snapshot",
        "device": device,
        "events": events.len(),
        "torch_peak_reserved": peak_reserved,
    });
    Ok(Trace { header, events })
}

fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Dict(map) => map.get(&HashableValue::String(key.to_string())),
        _ => None,
    }
}

fn as_list(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::List(items) | Value::Tuple(items) => Some(items),
        _ => None,
    }
}

fn as_str(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::I64(number) => Some(*number),
        // Addresses above 2^63 do not occur on Linux; larger integers are refused.
        Value::Int(big) => i64::try_from(big.clone()).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_pickle::SerOptions;

    use super::*;
    use crate::trace::TraceOp;

    fn action(kind: &str, addr: i64, size: i64, stream: i64) -> Value {
        let mut map = BTreeMap::new();
        for (key, value) in [
            ("action", Value::String(kind.into())),
            ("addr", Value::I64(addr)),
            ("size", Value::I64(size)),
            ("stream", Value::I64(stream)),
            ("time_us", Value::I64(0)),
        ] {
            map.insert(HashableValue::String(key.into()), value);
        }
        Value::Dict(map)
    }

    fn snapshot(actions: Vec<Value>) -> Vec<u8> {
        let mut map = BTreeMap::new();
        map.insert(HashableValue::String("segments".into()), Value::List(vec![]));
        map.insert(
            HashableValue::String("device_traces".into()),
            Value::List(vec![Value::List(actions)]),
        );
        serde_pickle::value_to_vec(&Value::Dict(map), SerOptions::new()).unwrap()
    }

    #[test]
    fn actions_become_allocs_and_frees_with_torch_reserve_in_the_header() {
        let bytes = snapshot(vec![
            action("segment_alloc", 0x1000_0000, 20 << 20, 0),
            action("alloc", 0x1000_0000, 4 << 20, 0),
            action("alloc", 0x1040_0000, 8 << 20, 7),
            action("free_requested", 0x1000_0000, 4 << 20, 0),
            action("free_completed", 0x1000_0000, 4 << 20, 0),
            action("snapshot", 0, 0, 0),
            action("alloc", 0x1000_0000, 2 << 20, 0),
            action("free_completed", 0x1040_0000, 8 << 20, 7),
            action("segment_alloc", 0x2000_0000, 2 << 20, 7),
            action("segment_free", 0x2000_0000, 2 << 20, 7),
        ]);
        let trace = parse(&bytes, "tiny", 0).unwrap();
        let ops: Vec<_> = trace.events.iter().map(|e| (e.op, e.id, e.size, e.stream)).collect();
        assert_eq!(
            ops,
            vec![
                (TraceOp::Alloc, 0, 4 << 20, 0),
                (TraceOp::Alloc, 1, 8 << 20, 1),
                (TraceOp::Free, 0, 4 << 20, 0),
                (TraceOp::Alloc, 2, 2 << 20, 0),
                (TraceOp::Free, 1, 8 << 20, 1),
            ],
            "a free_completed after free_requested adds nothing; streams are numbered as seen"
        );
        assert_eq!(trace.peak_live_bytes(), 12 << 20);
        assert_eq!(trace.header["torch_peak_reserved"], 22u64 << 20);
        assert_eq!(trace.name(), "tiny");
    }

    #[test]
    fn what_is_not_a_snapshot_is_an_error_that_says_so() {
        let not_pickle = parse(b"{\"trace\": 1}", "x", 0).unwrap_err().to_string();
        assert!(not_pickle.contains("not a pickle"), "{not_pickle}");
        let no_history = serde_pickle::value_to_vec(&Value::Dict(BTreeMap::new()), SerOptions::new()).unwrap();
        let err = parse(&no_history, "x", 0).unwrap_err().to_string();
        assert!(err.contains("_record_memory_history"), "{err}");
        let err = parse(&snapshot(vec![]), "x", 3).unwrap_err().to_string();
        assert!(err.contains("device 3") && err.contains("1 devices"), "{err}");
    }
}
