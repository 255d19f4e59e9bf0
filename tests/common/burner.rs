//! A bounded CPU burner for timing-sensitive tests: one busy thread per core while any test
//! of the binary holds a [`Burn`], so that such a test passes only if it passes on a busy
//! machine. Shared (counted) so that tests running at once do not stack burners; every
//! thread stops by itself after [`HARD_CAP`] whatever happens to the test.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a burner thread runs, even if a test hangs or leaks its [`Burn`].
pub const HARD_CAP: Duration = Duration::from_secs(600);

struct Shared {
    holders: usize,
    stop: Arc<AtomicBool>,
    spins: Arc<AtomicU64>,
}

static BURNER: Mutex<Option<Shared>> = Mutex::new(None);

/// Keeps every core busy while held.
pub struct Burn {
    spins: Arc<AtomicU64>,
}

/// Starts the burner (one busy thread per core the OS reports) unless it runs already.
pub fn every_core() -> Burn {
    let mut burner = BURNER.lock().unwrap_or_else(|e| e.into_inner());
    let shared = burner.get_or_insert_with(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..cores {
            let (stop, spins) = (stop.clone(), spins.clone());
            std::thread::spawn(move || spin(&stop, &spins));
        }
        Shared {
            holders: 0,
            stop,
            spins,
        }
    });
    shared.holders += 1;
    Burn {
        spins: shared.spins.clone(),
    }
}

impl Burn {
    /// Rounds of busy work done so far (a millisecond of wall time each): proof it ran.
    pub fn spins(&self) -> u64 {
        self.spins.load(Ordering::Relaxed)
    }
}

impl Drop for Burn {
    fn drop(&mut self) {
        let mut burner = BURNER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = burner.as_mut() {
            shared.holders -= 1;
            if shared.holders == 0 {
                shared.stop.store(true, Ordering::Relaxed);
                *burner = None;
            }
        }
    }
}

fn spin(stop: &AtomicBool, spins: &AtomicU64) {
    let until = Instant::now() + HARD_CAP;
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let round = Instant::now();
        while round.elapsed() < Duration::from_millis(1) {
            for _ in 0..1_000 {
                x = black_box(x ^ (x << 13) ^ (x >> 7) ^ (x << 17));
            }
        }
        spins.fetch_add(1, Ordering::Relaxed);
    }
}
