//! Every AMQP decoder of rabbit-once on arbitrary bytes (see docs/fuzzing.md).
//!
//! `rabbit_once::fuzzing::decode_all` panics if a decoder panics or breaks one of its checks
//! (a frame split wrongly, a table nested beyond the limit, a decoded table holding more heap
//! than a multiple of the input). On top of that, this target counts what is really allocated:
//! no single allocation, and no peak of live bytes, may be out of proportion to the input —
//! a length prefix claiming 4 GiB must not become a 4 GiB allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Forwards to the system allocator, remembering the largest request and the live total.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize, by: usize) {
    LARGEST.fetch_max(size, Relaxed);
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new block both exist while the bytes are copied.
        grew(new_size, new_size);
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `parse_frame` may reserve room for one whole frame of the negotiated frame_max (the check
/// uses 131,072) before it has arrived; `BytesMut` may round that up to twice.
const FRAME_RESERVE: usize = 2 * (131_072 + 8);
/// Heap per input byte a decoded table may hold (`transport::fuzzing::HEAP_PER_BYTE`).
const PER_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    LARGEST.store(0, Relaxed);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);

    rabbit_once::fuzzing::decode_all(data);

    let largest = LARGEST.load(Relaxed);
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    let n = data.len();
    assert!(
        largest <= PER_BYTE * n + FRAME_RESERVE + 4096,
        "one allocation of {largest} bytes decoding {n} bytes"
    );
    assert!(
        peak <= 4 * PER_BYTE * n + FRAME_RESERVE + 65_536,
        "{peak} bytes live at once decoding {n} bytes"
    );
});
