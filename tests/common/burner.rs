//! A bounded CPU burner for timing-sensitive tests: one busy thread per core, so that the
//! processes under test compete for CPU as on a loaded host (a test that passes only on an
//! idle machine is not a passing test). Stopped when dropped, and in any case after its cap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Burner {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Burner {
    /// Busy threads on every core until dropped, for `cap` at most.
    pub fn start(cap: Duration) -> Burner {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + cap;
        let threads = (0..cores)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("burner-{i}"))
                    .spawn(move || spin(&stop, until))
                    .expect("starting a burner thread")
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spin(stop: &AtomicBool, until: Instant) {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
