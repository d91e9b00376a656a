//! glibc malloc tuning for the long-lived daemon (issue 15, item 4).
//!
//! glibc gives every thread that contends for the heap an arena of its own, up to 8 per core,
//! and keeps what each arena once held. The worker runs its CPU work on tokio's blocking pool
//! and on decoder and encoder threads, so a worker that has run many jobs holds many half-empty
//! arenas. Measured with `tests/daemon.rs` `long_lived_worker_memory` (WORKER_CONCURRENCY=2, 120
//! jobs of the clear dialogue, 2-core machine): RSS levels at 47 MB with glibc's default and at
//! 28 MB with two arenas, at the same throughput. So the daemon caps the arenas at
//! [`ARENA_MAX`] (unless `MALLOC_ARENA_MAX` says otherwise) and returns freed memory to the
//! system after every job ([`trim`]). Elsewhere (musl, macOS) both are no-ops.

/// Arenas the daemon allows: one per job slot is plenty, the heap is not its bottleneck.
pub const ARENA_MAX: i32 = 2;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// `M_ARENA_MAX` of glibc's `<malloc.h>`.
    pub const M_ARENA_MAX: c_int = -8;

    unsafe extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Caps glibc's arenas at [`ARENA_MAX`], unless `MALLOC_ARENA_MAX` is set (glibc then reads it
/// itself: an operator's choice wins). Call first thing, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            glibc::mallopt(glibc::M_ARENA_MAX, ARENA_MAX);
        }
    }
}

/// Returns the free memory at the top of every arena to the system (after a job, when the
/// decode buffers, PCM windows and HTTP bodies of that job are gone).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is safe to call at any time.
    unsafe {
        glibc::malloc_trim(0);
    }
}
