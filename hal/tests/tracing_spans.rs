//! `tracing` on the pool's slow paths only: a miss, a release and a refusal say what they
//! did; a cache hit and its return say nothing.

use std::sync::{Arc, Mutex};

use gpuhal_hal::pool::{CachingAllocator, CountingMemory, CountingStream, PoolConfig};
use gpuhal_hal::{MemoryKind, StreamId};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::Registry;

/// Names of the spans opened and levels + messages of the events emitted.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: Subscriber> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        self.0.lock().unwrap().push(format!("span {}", attrs.metadata().name()));
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", meta.level(), meta.target()));
    }
}

#[test]
fn misses_releases_and_refusals_are_traced_and_hits_are_not() {
    let seen = Seen::default();
    let subscriber = Registry::default().with(seen.clone());
    tracing::subscriber::with_default(subscriber, || {
        let config = PoolConfig {
            memory_limit: Some(8 << 20),
            ..PoolConfig::default()
        };
        let allocator = CachingAllocator::with_config(CountingMemory::new(1 << 30), config);
        let stream = allocator.stream_cache(CountingStream::new(), StreamId::fresh());

        drop(stream.allocate(4 << 20, MemoryKind::Device).unwrap());
        assert_eq!(seen.take(), vec!["span native_allocate"], "a miss");

        for _ in 0..100 {
            drop(stream.allocate(4 << 20, MemoryKind::Device).unwrap());
        }
        assert!(seen.take().is_empty(), "cache hits and returns emit nothing");

        // 6 MiB does not fit beside the idle 4 MiB under the 8 MiB limit: the idle block
        // is released first (a debug event and a native free), then allocated.
        let big = stream.allocate(6 << 20, MemoryKind::Device).unwrap();
        let seen_now = seen.take();
        assert!(
            seen_now.contains(&"DEBUG gpuhal_hal::pool::allocator".to_string()),
            "{seen_now:?}"
        );
        assert!(seen_now.contains(&"span native_free".to_string()), "{seen_now:?}");
        assert!(seen_now.contains(&"span native_allocate".to_string()), "{seen_now:?}");

        assert!(stream.allocate(4 << 20, MemoryKind::Device).is_err());
        assert_eq!(seen.take(), vec!["WARN gpuhal_hal::pool::allocator"], "a limit refusal");
        drop(big);
    });
}
