//! The global allocator: mimalloc, asked for plain blocks whenever every block it hands
//! out meets the layout's alignment.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to a machine word at least: the smallest block is
/// one word, and every block size is a whole number of words.
const WORD: usize = size_of::<usize>();

/// mimalloc with a plain-block path. The `mimalloc` crate passes every request to
/// `mi_malloc_aligned`, whose fast path covers only blocks up to 1 KiB found free at the
/// right alignment; larger ones (read buffers, a boxed backend call: about four per
/// proxied request) take its generic, over-allocating path, ~220 instructions instead
/// of ~60 (callgrind, docs/benchmarks.md). A layout aligned to a word or less, nearly
/// every one, needs nothing `mi_malloc` does not give every block.
pub(crate) struct Allocator;

type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// `plain` for a layout aligned to a word or less, `aligned` otherwise.
///
/// # Safety
/// `plain` and `aligned` are one mimalloc family's entry points (malloc or zalloc).
#[allow(unsafe_code)] // reason: calls mimalloc's C API, see the impl below
#[inline]
unsafe fn allocate(layout: Layout, plain: Plain, aligned: Aligned) -> *mut u8 {
    // SAFETY: mimalloc accepts any size, and `Layout` guarantees a power-of-two alignment.
    unsafe {
        if layout.align() <= WORD {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: each method forwards to mimalloc, which keeps the C allocation contract: the
// plain calls return word-aligned blocks (or null), taken only for layouts that ask no
// more; the `_aligned` calls return blocks at the requested alignment (a power of two,
// as `Layout` guarantees); `mi_free`, `mi_realloc` and `mi_realloc_aligned` accept blocks
// from either family. Nothing here touches memory itself.
#[allow(unsafe_code)] // reason: `GlobalAlloc` is an unsafe trait; the calls are mimalloc's C API
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the malloc family.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the zalloc family.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_meet_their_alignment_and_keep_their_bytes() {
        let a = Allocator;
        for align in [1, 2, 8, 16, 64, 4096] {
            for size in [1, 7, 8, 24, 100, 1024, 1500, 8192, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with its layout.
                #[allow(unsafe_code)]
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size}/{align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert!(
                        !q.is_null() && (q as usize).is_multiple_of(align),
                        "{size}/{align} grown"
                    );
                    assert!((0..size).all(|i| *q.add(i) == 0xab));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null() && (z as usize).is_multiple_of(align));
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
