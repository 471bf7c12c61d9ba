//! Decoding hostile bytes never allocates more than the message size limit.
//!
//! A counting global allocator records the largest single allocation made while
//! decoding; length prefixes claiming gigabytes must not turn into allocations.

// The counting allocator must implement the unsafe GlobalAlloc trait; it only
// forwards to System and records sizes.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use outpost_protocol::{
    KeySet, Manifest, SigningKey, StatusReport, TrustState, Verifier, MAX_MESSAGE_BYTES,
};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards unchanged to the System allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn decode_all(verifier: &Verifier, bytes: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    let _ = verifier.verify(bytes, 0);
    let _ = postcard::from_bytes::<Manifest>(bytes);
    let _ = postcard::from_bytes::<StatusReport>(bytes);
    LARGEST.load(Ordering::Relaxed)
}

fn verifier() -> (SigningKey, Verifier) {
    let key = SigningKey::generate().unwrap();
    let keyset = KeySet {
        version: 1,
        issued_at: 0,
        keys: vec![key.public_key()],
        expires_at: u64::MAX,
        root_version: 1,
    };
    let v = Verifier::new(
        "d".parse().unwrap(),
        TrustState {
            root: key.public_key(),
            keyset,
            last: None,
            time_floor: 0,
            root_version: 1,
        },
    );
    (key, v)
}

#[test]
fn huge_length_prefixes_do_not_allocate() {
    let (_, v) = verifier();
    // A Manifest whose apps vector claims u32::MAX entries, and strings claiming 4 GiB.
    let mut hostile = vec![1u8, b'd', 0, 0, 0, 1, b'k'];
    hostile.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    hostile.extend_from_slice(&[0u8; 64]);
    let largest = decode_all(&v, &hostile);
    assert!(
        largest <= MAX_MESSAGE_BYTES,
        "largest allocation {largest} bytes"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_bytes_allocate_at_most_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, v) = verifier();
        let largest = decode_all(&v, &bytes);
        prop_assert!(largest <= MAX_MESSAGE_BYTES, "largest allocation {} bytes", largest);
    }
}
