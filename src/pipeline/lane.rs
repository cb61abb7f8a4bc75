//! The slow lane: a bounded pool of OS threads for work that would hold up
//! the async workers (an evaluation past its inline budget, a large body to
//! parse). The kernel, not the async runtime, then shares the CPU between
//! slow and quick work, and health checks and quick decisions never wait
//! behind a slow one.
//!
//! Its threads are limited, and so is the queue in front of them: when
//! both are full, work is refused at once and the request is denied
//! `overloaded`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use crate::config::SlowLaneConfig;
use crate::metrics::{self, Histogram};

type Job = Box<dyn FnOnce() + Send>;

/// The slow lane's threads and queue were both full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the slow lane is full")]
pub struct LaneFull;

/// What the slow lane has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct LaneStats {
    /// Jobs run in the slow lane.
    pub runs: AtomicU64,
    /// Jobs refused because the lane was full.
    pub refused: AtomicU64,
    /// Jobs waiting for a thread now.
    pub queued: AtomicU64,
    /// Time from submission to a thread taking the job.
    pub wait: Histogram,
}

/// A bounded pool of threads with a bounded queue.
pub struct SlowLane {
    jobs: mpsc::SyncSender<Job>,
    pub stats: Arc<LaneStats>,
}

impl std::fmt::Debug for SlowLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowLane")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SlowLane {
    /// Starts the lane's threads; they end when the lane is dropped.
    pub fn start(config: &SlowLaneConfig) -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.queue);
        let queue = Arc::new(Mutex::new(queue));
        let stats = Arc::new(LaneStats::default());
        for n in 0..config.threads.max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("slow-lane-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            // A job that panics fails its own request (its
                            // answer never comes: a deny), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a slow-lane thread");
            }
        }
        Self { jobs, stats }
    }

    /// Runs `work` on a slow-lane thread and waits for its result, without
    /// holding up an async worker.
    ///
    /// # Errors
    /// The lane's threads and queue are full: refused at once.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LaneFull> {
        let (done, result) = tokio::sync::oneshot::channel();
        let stats = Arc::clone(&self.stats);
        let submitted = Instant::now();
        let job: Job = Box::new(move || {
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            stats.wait.observe(submitted.elapsed());
            stats.runs.fetch_add(1, Ordering::Relaxed);
            // The request may have given up (its deadline); the work is bounded anyway.
            let _ = done.send(work());
        });
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(LaneFull);
        }
        result.await.map_err(|_| LaneFull)
    }

    /// The lane's runs, refusals, queue depth and waiting time.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(&self, encoder: &mut metrics::DescriptorEncoder) -> std::fmt::Result {
        metrics::counter(
            encoder,
            "arbiter_slow_lane_runs_total",
            "Evaluations and body parses run in the slow lane.",
            self.stats.runs.load(Ordering::Relaxed),
        )?;
        metrics::counter(
            encoder,
            "arbiter_slow_lane_refused_total",
            "Slow work refused because the lane's threads and queue were full (denied overloaded).",
            self.stats.refused.load(Ordering::Relaxed),
        )?;
        metrics::gauge(
            encoder,
            "arbiter_slow_lane_queue_depth",
            "Slow work waiting for a thread.",
            self.stats.queued.load(Ordering::Relaxed),
        )?;
        self.stats.wait.encode(
            encoder,
            "arbiter_slow_lane_queue_seconds",
            "Time slow work waited for a slow-lane thread.",
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn work_runs_off_the_runtime_and_a_full_lane_refuses_at_once() {
        let lane = Arc::new(SlowLane::start(&SlowLaneConfig {
            threads: 1,
            queue: 1,
            ..SlowLaneConfig::default()
        }));
        let name = lane
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("slow-lane-0"));

        // A job that panics fails its own request, not the lane's thread.
        #[allow(clippy::panic, reason = "the panic is the test")]
        let failed = lane.run(|| -> u8 { panic!("a job that panics") }).await;
        assert_eq!(failed, Err(LaneFull));
        let after = tokio::time::timeout(Duration::from_secs(5), lane.run(|| 7)).await;
        assert_eq!(after.map_err(|_| "the thread died"), Ok(Ok(7)));

        // One thread busy, one job queued: the third is refused, not queued.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let lane = Arc::clone(&lane);
            tokio::spawn(async move { lane.run(move || hold.recv().is_ok()).await })
        };
        while lane.stats.queued.load(Ordering::Relaxed) > 0
            || lane.stats.runs.load(Ordering::Relaxed) < 4
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let queued = {
            let lane = Arc::clone(&lane);
            tokio::spawn(async move { lane.run(|| 2).await })
        };
        while lane.stats.queued.load(Ordering::Relaxed) < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(lane.run(|| 3).await, Err(LaneFull));
        assert_eq!(lane.stats.refused.load(Ordering::Relaxed), 1);
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), Ok(true));
        assert_eq!(queued.await.unwrap(), Ok(2));
        let text = metrics::text_of(&lane, SlowLane::encode_metrics);
        assert!(text.contains("arbiter_slow_lane_runs_total 5"), "{text}");
        assert!(text.contains("arbiter_slow_lane_refused_total 1"), "{text}");
    }
}
