//! The command line's allocator: the system allocator, tuned so that fresh memory costs few
//! page faults.
//!
//! A `verify` of a large network touches tens of megabytes of fresh memory (parameters,
//! values and adjoints of every node over the batch, the report). On Linux every 4 KiB page
//! of it costs a page fault the first time it is written, and glibc's allocator gives large
//! blocks back to the kernel when they are freed, so the next block of that size faults
//! again: 11 000 faults on the 784-256-256-10 MLP of `tools/bench_mlp_vs_torch.py`, about a
//! fifth of the whole run. Two changes, both only advice or allocator settings (neither
//! changes what any allocation returns):
//!
//! * [`tune`] keeps blocks of up to 32 MiB in glibc's heap (`M_MMAP_THRESHOLD`), keeps freed
//!   memory there for reuse (`M_TRIM_THRESHOLD`) and grows the heap 64 MiB at a time
//!   (`M_TOP_PAD`: address space only, pages are backed when touched);
//! * the allocator asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`, what glibc's
//!   own `glibc.malloc.hugetlb=1` tunable and PyTorch's `THP_MEM_ALLOC_ENABLE` do) for the
//!   heap as it grows and for every block of ≥ 1 MiB, so that memory is faulted in 2 MiB at
//!   a time where the kernel offers huge pages (`/sys/kernel/mm/transparent_hugepage`);
//!   elsewhere nothing changes.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are advised where they lie.
#[cfg(target_os = "linux")]
const MIN_ADVISED: usize = 1 << 20;
/// The huge page size on x86-64 and most aarch64 kernels.
#[cfg(target_os = "linux")]
const HUGE: usize = 1 << 21;

/// [`System`], advising huge pages for the heap and for every block of ≥ 1 MiB.
pub struct HugePages;

// SAFETY: every method forwards to `System` with the caller's arguments and returns its
// result unchanged; `advise` only gives the kernel advice about pages of this process's
// own memory (it neither reads nor writes memory nor changes its contents or validity).
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if new_size > layout.size() {
            advise(p, new_size);
        }
        p
    }
}

/// Set glibc's allocator up for few page faults (module docs); call once, first thing.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (each call fails harmlessly with a
    // value glibc rejects); sbrk(0) only reads the current program break.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // one arena: the worker threads' blocks come from the same advised heap (a thread's
        // own arena is mapped in 4 KiB pages, and its page faults contend with this thread's)
        libc::mallopt(libc::M_ARENA_MAX, 1);
        let brk = libc::sbrk(0) as usize;
        if brk != usize::MAX {
            ADVISED.store(brk / HUGE * HUGE, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The heap below this address has been advised (0: [`tune`] was not called).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static ADVISED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Advise huge pages for the heap grown since the last call, and for the 2 MiB-aligned
/// range covering a large block `[p, p + size)`. Ranges may reach into the allocator's own
/// neighbouring memory or past the end of a mapping (the kernel then advises what is
/// mapped and reports ENOMEM, ignored here): advice is a flag on the memory area, and a
/// huge page is used only where a whole aligned 2 MiB lies inside one advised area.
#[cfg(target_os = "linux")]
fn advise(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    #[cfg(target_env = "gnu")]
    {
        use std::sync::atomic::Ordering::Relaxed;
        let low = ADVISED.load(Relaxed);
        if low != 0 {
            // SAFETY: sbrk(0) only reads the current program break.
            let brk = unsafe { libc::sbrk(0) } as usize;
            // (void*)-1 would be an error: no information
            if brk > low && brk != usize::MAX {
                ADVISED.store(brk, Relaxed);
                madvise_huge(low / HUGE * HUGE, brk);
            }
        }
    }
    if size >= MIN_ADVISED {
        madvise_huge(
            (p as usize) / HUGE * HUGE,
            (p as usize).saturating_add(size),
        );
    }
}

/// `madvise(MADV_HUGEPAGE)` on `[start, end)` rounded out to whole huge pages.
#[cfg(target_os = "linux")]
fn madvise_huge(start: usize, end: usize) {
    let Some(end) = end.div_ceil(HUGE).checked_mul(HUGE) else {
        return;
    };
    if end > start {
        // SAFETY: MADV_HUGEPAGE changes neither the contents nor the validity of any memory
        // (only how the kernel backs it when it is first touched); a failure is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_p: *mut u8, _size: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn advice_is_harmless() {
        // ranges at the top of the address space, unmapped ranges and empty ones: no panic,
        // no effect
        madvise_huge(usize::MAX - 5, usize::MAX);
        madvise_huge(HUGE, HUGE);
        madvise_huge(3 * HUGE, 2 * HUGE);
        advise(std::ptr::null_mut(), 1 << 30);
        // a large block stays usable and keeps its contents through the advice
        let mut v = vec![7u8; 5 << 20];
        advise(v.as_mut_ptr(), v.len());
        v[4 << 20] = 1;
        assert_eq!(
            v.iter().map(|&b| b as usize).sum::<usize>(),
            7 * (5 << 20) - 6
        );
    }
}
