//! Independent jobs on the machine's cores: the reverse sweeps that build the rows of J_α
//! (one per active switch, THEORY §2 "computing the reduced data by sweeps") and the text of
//! a large JSON report. Every job is a pure function of its index, so the results, taken in
//! job order, are the same bits whatever the number of threads.
//!
//! The number of threads is `KINKCHECK_THREADS` when it is set (a positive integer; `1` runs
//! everything on the calling thread), else the machine's available parallelism, at most
//! [`MAX_THREADS`]; [`set_threads`] overrides both within a process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most threads used by default (the jobs are few and memory-bound beyond that).
pub const MAX_THREADS: usize = 8;

/// Threads set by [`set_threads`] (0: not set).
static SET: AtomicUsize = AtomicUsize::new(0);

/// Use `n` threads from now on in this process (`0`: back to `KINKCHECK_THREADS` or the
/// machine's parallelism). The results do not depend on it, only the time.
pub fn set_threads(n: usize) {
    SET.store(n, Ordering::Relaxed);
}

/// Threads to use: the number given to [`set_threads`], else `KINKCHECK_THREADS` if set to a
/// positive integer, else `available_parallelism()` capped at [`MAX_THREADS`] (1 when it is
/// unknown).
///
/// ```
/// assert!(kinkcheck::par::threads() >= 1);
/// ```
pub fn threads() -> usize {
    let set = SET.load(Ordering::Relaxed);
    if set >= 1 {
        return set;
    }
    if let Some(n) = std::env::var("KINKCHECK_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
}

/// Run jobs `0..n`, job `i` as `f(state, i)`, on the calling thread (with the state `first`)
/// and on `helpers` other threads, each of which first makes its own state with `make` (so
/// that the calling thread, which starts on the jobs at once, never waits for a state to be
/// built). The jobs are handed out in ascending order as threads get free; the results come
/// back in job order. With no helper, or one job, it is a plain loop.
///
/// ```
/// let mut mine = Vec::new();
/// let out = kinkcheck::par::map_with_helpers(&mut mine, 2, Vec::new, 20, |seen, i| {
///     seen.push(i);
///     2 * i
/// });
/// assert_eq!(out, (0..20).map(|i| 2 * i).collect::<Vec<_>>());
/// assert!(mine.windows(2).all(|w| w[0] < w[1]));
/// ```
pub fn map_with_helpers<S, T, F, M>(
    first: &mut S,
    helpers: usize,
    make: M,
    n: usize,
    f: F,
) -> Vec<T>
where
    T: Send,
    F: Fn(&mut S, usize) -> T + Sync,
    M: Fn() -> S + Sync,
{
    if helpers == 0 || n <= 1 {
        return (0..n).map(|i| f(first, i)).collect();
    }
    let next = AtomicUsize::new(0);
    let work = |s: &mut S| {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, f(s, i)));
        }
    };
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers)
            .map(|_| {
                scope.spawn(|| {
                    // no jobs left by the time the state would be ready: do not build it
                    if next.load(Ordering::Relaxed) >= n {
                        return Vec::new();
                    }
                    work(&mut make())
                })
            })
            .collect();
        let mut all = vec![work(first)];
        for h in handles {
            // a job that panicked panics here too, as it would have on one thread
            all.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        for (i, t) in all.into_iter().flatten() {
            slots[i] = Some(t);
        }
    });
    // every index below n was handed out exactly once by the counter, and every thread ran
    // its jobs to completion before the scope ended
    slots
        .into_iter()
        .map(|t| t.expect("every job ran once"))
        .collect()
}

/// `(a(), b())`: `a` on another thread while `b` runs on this one when there is more than
/// one thread ([`threads`]), else one after the other.
///
/// ```
/// let (x, y) = kinkcheck::par::join(|| 1 + 1, || "two");
/// assert_eq!((x, y), (2, "two"));
/// ```
pub fn join<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if threads() < 2 {
        return (a(), b());
    }
    std::thread::scope(|s| {
        let h = s.spawn(a);
        let y = b();
        // a panic of `a` panics here, as it would have on this thread
        let x = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (x, y)
    })
}

/// Jobs `0..n`, `make(i)`, handed out in ascending order to every thread that calls
/// [`Jobs::work`] (a helper started early and, later, the thread that needs the results),
/// their results kept by index.
///
/// ```
/// let jobs = kinkcheck::par::Jobs::new(6, |i| i * i);
/// std::thread::scope(|s| {
///     s.spawn(|| jobs.work());
///     jobs.work(); // this thread helps, then waits for the helper at the end of the scope
/// });
/// assert_eq!(jobs.into_results(), Some(vec![0, 1, 4, 9, 16, 25]));
/// ```
pub struct Jobs<T, F> {
    make: F,
    n: usize,
    next: AtomicUsize,
    stop: AtomicBool,
    done: std::sync::Mutex<Vec<Option<T>>>,
}

impl<T: Send, F: Fn(usize) -> T + Sync> Jobs<T, F> {
    /// `n` jobs, none begun.
    pub fn new(n: usize, make: F) -> Self {
        Jobs {
            make,
            n,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            done: std::sync::Mutex::new((0..n).map(|_| None).collect()),
        }
    }

    /// Run jobs until none is left (or [`Jobs::stop`] was called).
    pub fn work(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            let t = (self.make)(i);
            // a poisoned lock means a job panicked on another thread; its scope re-raises it
            if let Ok(mut done) = self.done.lock() {
                done[i] = Some(t);
            }
        }
    }

    /// Begin no more jobs (the results are then incomplete).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The results in job order, if every job ran.
    pub fn into_results(self) -> Option<Vec<T>> {
        self.done.into_inner().ok()?.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_in_job_order_for_any_number_of_threads() {
        for helpers in 0..=4 {
            for n in [0, 1, 2, 7, 100] {
                let seen = std::sync::Mutex::new(Vec::new());
                let mut mine = Vec::new();
                let out = map_with_helpers(
                    &mut mine,
                    helpers,
                    Vec::new,
                    n,
                    |own: &mut Vec<usize>, i| {
                        // each thread takes its jobs in ascending order
                        assert!(own.last().is_none_or(|&l| l < i));
                        own.push(i);
                        seen.lock().unwrap().push(i);
                        3 * i + 1
                    },
                );
                assert_eq!(out, (0..n).map(|i| 3 * i + 1).collect::<Vec<_>>());
                let mut all = seen.into_inner().unwrap();
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "each job once");
            }
        }
    }

    #[test]
    fn jobs_shared_by_threads_give_every_result_in_order() {
        for helpers in 0..=3 {
            for n in [0, 1, 3, 50] {
                let jobs = Jobs::new(n, |i| 2 * i);
                std::thread::scope(|s| {
                    for _ in 0..helpers {
                        s.spawn(|| jobs.work());
                    }
                    jobs.work();
                });
                assert_eq!(jobs.into_results(), Some((0..n).map(|i| 2 * i).collect()));
            }
        }
        // stopped before the work: incomplete, so no results
        let jobs = Jobs::new(4, |i| i);
        jobs.stop();
        jobs.work();
        assert_eq!(jobs.into_results(), None);
    }

    #[test]
    fn helpers_build_their_own_state_and_results_stay_in_order() {
        for helpers in 0..=3 {
            for n in [0, 1, 2, 9, 200] {
                let mut mine = Vec::new();
                let made = AtomicUsize::new(0);
                let out = map_with_helpers(
                    &mut mine,
                    helpers,
                    || {
                        made.fetch_add(1, Ordering::Relaxed);
                        Vec::new()
                    },
                    n,
                    |seen: &mut Vec<usize>, i| {
                        seen.push(i);
                        i * i + 1
                    },
                );
                assert_eq!(out, (0..n).map(|i| i * i + 1).collect::<Vec<_>>());
                assert!(mine.windows(2).all(|w| w[0] < w[1]));
                assert!(made.load(Ordering::Relaxed) <= helpers);
                if n <= 1 {
                    assert_eq!(made.load(Ordering::Relaxed), 0, "no helper for one job");
                }
            }
        }
    }
}
