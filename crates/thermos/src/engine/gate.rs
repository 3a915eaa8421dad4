//! The gate in front of one provider app's token endpoint: it bounds how many
//! requests are in flight to the app and how fast they leave, serves urgent
//! (on-demand) callers before background (scheduled) work, and holds every
//! request back while the provider's `Retry-After` runs.
//!
//! The gate owns only waiting. It never calls the provider, never reads the
//! store and never decides whether a request should be made at all (the
//! circuit breaker, `thermos_core::breaker`, does). Time is tokio's, so tests
//! use paused time; this module does no IO.
//!
//! Concurrency is a hand-made slot pool: when a [`GatePermit`] drops, its slot
//! goes straight to the first urgent waiter, else the first background waiter.
//! The rate is a pacer ("next free slot", no burst beyond one): an acquisition
//! takes the slot `max(now, next_slot, hold)` and moves `next_slot` one
//! spacing (1/rate) later. A permit holds its concurrency slot while it waits
//! for its pacer slot, so with a concurrency limit of N at most N pacer slots
//! are reserved ahead and an urgent caller never waits behind more than N
//! (without a concurrency limit, pacer slots go in arrival order).
//!
//! Instances that share a database share the provider's limits: with
//! [`Gate::set_share`] at N live instances, this gate allows
//! `max(1, max_concurrency / N)` permits and spaces them N/rate apart, so the
//! instances together stay within the configured limits (concurrency can
//! only exceed it when there are more instances than slots).
//!
//! Read next: the engine's refresh path, which acquires a permit around each
//! call to the token endpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Who is waiting: urgent waiters are served before background ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// An on-demand caller is waiting for the answer.
    Urgent,
    /// Scheduled work.
    Background,
}

/// The concurrency and rate gate of one provider app. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

/// One concurrency slot of a [`Gate`]; dropping it hands the slot to the next
/// waiter (urgent first, FIFO within a class).
#[derive(Debug)]
pub struct GatePermit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_concurrency: Option<u32>,
    rate_per_second: Option<u32>,
    /// Time between two pacer slots (1/rate) for a whole share.
    spacing: Option<Duration>,
    /// Instances sharing the limits (at least 1).
    share: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u32,
    urgent: VecDeque<Waiter>,
    background: VecDeque<Waiter>,
    next_waiter_id: u64,
    next_slot: Option<Instant>,
    hold: Option<Instant>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

impl Gate {
    /// A gate allowing `max_concurrency` permits at once and `rate_per_second`
    /// acquisitions per second; `None` is unlimited. A limit of 0 (which the
    /// config rejects) is treated as 1, so the gate always makes progress.
    pub fn new(max_concurrency: Option<u32>, rate_per_second: Option<u32>) -> Self {
        let max_concurrency = max_concurrency.map(|n| n.max(1));
        let rate_per_second = rate_per_second.map(|n| n.max(1));
        Self {
            inner: Arc::new(Inner {
                max_concurrency,
                rate_per_second,
                spacing: rate_per_second.map(|rate| Duration::from_secs(1) / rate),
                share: AtomicU32::new(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Waits for a concurrency slot (urgent waiters before background ones,
    /// FIFO within a class), then for the pacer's next slot (spaced 1/rate,
    /// never before a [`hold_until`](Self::hold_until)).
    ///
    /// Cancel-safe: a waiter dropped while queued leaves no slot behind, even
    /// if the slot was handed to it just before. Dropped while waiting for its
    /// pacer slot, it releases its concurrency slot; the pacer slot is lost,
    /// which only makes the gate slower, never faster.
    pub async fn acquire(&self, priority: Priority) -> GatePermit {
        self.take_slot(priority).await;
        let permit = GatePermit {
            inner: Arc::clone(&self.inner),
        };
        let mut slot = self.inner.reserve_pacer_slot(Instant::now());
        loop {
            if slot > Instant::now() {
                tokio::time::sleep_until(slot).await;
            }
            // A hold set while this waiter slept still applies to it.
            match self.inner.lock().hold {
                Some(hold) if hold > slot => {}
                _ => return permit,
            }
            slot = self.inner.reserve_pacer_slot(Instant::now());
        }
    }

    /// No request leaves before `until` (a provider's `Retry-After`): every
    /// acquisition's pacer slot is at least `until`, including those already
    /// waiting. An earlier `until` than the hold in force changes nothing.
    pub fn hold_until(&self, until: Instant) {
        let mut state = self.inner.lock();
        state.hold = Some(state.hold.map_or(until, |hold| hold.max(until)));
    }

    /// The hold in force, if it ends in the future.
    pub fn held_until(&self) -> Option<Instant> {
        self.inner.lock().hold.filter(|hold| *hold > Instant::now())
    }

    /// Permits currently held (including those waiting for their pacer slot).
    pub fn in_flight(&self) -> u32 {
        self.inner.lock().in_flight
    }

    /// Waiters queued for a concurrency slot: (urgent, background).
    pub fn waiting(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.urgent.len(), state.background.len())
    }

    /// The limits: (max concurrency, rate per second); `None` is unlimited.
    pub fn limits(&self) -> (Option<u32>, Option<u32>) {
        (self.inner.max_concurrency, self.inner.rate_per_second)
    }

    /// This instance's share of the limits when `instances` instances (at
    /// least 1) share them. A larger share hands free slots to waiters at
    /// once; a smaller one takes effect as permits are released.
    pub fn set_share(&self, instances: u32) {
        self.inner.share.store(instances.max(1), Ordering::Relaxed);
        let mut state = self.inner.lock();
        while self.inner.max_now().is_none_or(|max| state.in_flight < max) {
            let next = match state.urgent.pop_front() {
                Some(waiter) => waiter,
                None => match state.background.pop_front() {
                    Some(waiter) => waiter,
                    None => return,
                },
            };
            if next.grant.send(()).is_ok() {
                state.in_flight += 1;
            }
        }
    }

    /// The number of instances sharing the limits.
    pub fn share(&self) -> u32 {
        self.inner.share.load(Ordering::Relaxed)
    }

    /// Takes a concurrency slot at once if one is free and nobody is queued,
    /// else queues and waits for a released slot to be handed over.
    async fn take_slot(&self, priority: Priority) {
        loop {
            let rx = {
                let mut state = self.inner.lock();
                let queued = state.urgent.len() + state.background.len();
                let free = self.inner.max_now().is_none_or(|max| state.in_flight < max);
                if free && queued == 0 {
                    state.in_flight += 1;
                    return;
                }
                let (tx, rx) = oneshot::channel();
                let id = state.next_waiter_id;
                state.next_waiter_id += 1;
                let waiter = Waiter { id, grant: tx };
                match priority {
                    Priority::Urgent => state.urgent.push_back(waiter),
                    Priority::Background => state.background.push_back(waiter),
                }
                Queued {
                    inner: Arc::clone(&self.inner),
                    id,
                    rx,
                    settled: false,
                }
            };
            if rx.wait().await {
                return;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot leave the state half-updated; a panic
        // elsewhere while holding the lock must not wedge every provider call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This instance's concurrency limit: its share of the configured one.
    fn max_now(&self) -> Option<u32> {
        let share = self.share.load(Ordering::Relaxed).max(1);
        self.max_concurrency.map(|max| (max / share).max(1))
    }

    /// The pacer: the next free slot at or after `now` and the hold.
    fn reserve_pacer_slot(&self, now: Instant) -> Instant {
        let mut state = self.lock();
        let mut slot = now;
        for bound in [state.next_slot, state.hold].into_iter().flatten() {
            slot = slot.max(bound);
        }
        if let Some(spacing) = self.spacing {
            state.next_slot = Some(slot + spacing * self.share.load(Ordering::Relaxed).max(1));
        }
        slot
    }

    /// Hands a released slot to the next waiter, or frees it.
    fn release(&self) {
        let mut state = self.lock();
        // Over a shrunken share: the slot is given up, not handed over.
        if self.max_now().is_some_and(|max| state.in_flight > max) {
            state.in_flight -= 1;
            return;
        }
        loop {
            let next = match state.urgent.pop_front() {
                Some(waiter) => Some(waiter),
                None => state.background.pop_front(),
            };
            let Some(waiter) = next else {
                state.in_flight = state.in_flight.saturating_sub(1);
                return;
            };
            // Sent under the lock, so a waiter's cancellation (which takes the
            // lock) sees either itself queued or the slot handed over.
            if waiter.grant.send(()).is_ok() {
                return;
            }
        }
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

/// A queued waiter; dropped before it settles, it leaves no slot behind.
struct Queued {
    inner: Arc<Inner>,
    id: u64,
    rx: oneshot::Receiver<()>,
    settled: bool,
}

impl Queued {
    /// True once a slot was handed over; false if the grant vanished (no
    /// slot was handed over, so the caller queues again).
    async fn wait(mut self) -> bool {
        let granted = (&mut self.rx).await.is_ok();
        self.settled = true;
        granted
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        let id = self.id;
        for queue in [&mut state.urgent, &mut state.background] {
            if let Some(at) = queue.iter().position(|w| w.id == id) {
                queue.remove(at);
                return;
            }
        }
        drop(guard);
        // No longer queued and our receiver is alive: a slot was handed to us.
        self.inner.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::FutureExt;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Spawns a task that acquires a permit, logs `name`, and releases it.
    fn spawn_logged(gate: &Gate, priority: Priority, name: &'static str, log: &Arc<Mutex<Vec<&'static str>>>) {
        let (gate, log) = (gate.clone(), Arc::clone(log));
        tokio::spawn(async move {
            let _permit = gate.acquire(priority).await;
            log.lock().unwrap().push(name);
        });
    }

    /// Yields until the gate's queues hold `expected`, so that waiters are
    /// queued in a known order.
    async fn until_waiting(gate: &Gate, expected: (usize, usize)) {
        for _ in 0..1000 {
            if gate.waiting() == expected {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("waiting is {:?}, expected {expected:?}", gate.waiting());
    }

    async fn log_after_release(
        first: GatePermit,
        gate: &Gate,
        log: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Vec<&'static str> {
        drop(first);
        until_waiting(gate, (0, 0)).await;
        for _ in 0..1000 {
            if gate.in_flight() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        log.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_concurrency_permits_are_out() {
        let gate = Gate::new(Some(3), None);
        let (current, peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (gate, current, peak) = (gate.clone(), Arc::clone(&current), Arc::clone(&peak));
                let priority = if i % 3 == 0 {
                    Priority::Urgent
                } else {
                    Priority::Background
                };
                tokio::spawn(async move {
                    let _permit = gate.acquire(priority).await;
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert!(gate.in_flight() <= 3);
                    tokio::time::sleep(10 * MS).await;
                    current.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.waiting(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_waiters_are_served_before_background_waiters_queued_earlier() {
        let gate = Gate::new(Some(1), None);
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = gate.acquire(Priority::Background).await;
        spawn_logged(&gate, Priority::Background, "b1", &log);
        until_waiting(&gate, (0, 1)).await;
        spawn_logged(&gate, Priority::Background, "b2", &log);
        until_waiting(&gate, (0, 2)).await;
        spawn_logged(&gate, Priority::Urgent, "u1", &log);
        until_waiting(&gate, (1, 2)).await;
        assert_eq!(log_after_release(first, &gate, &log).await, ["u1", "b1", "b2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_one_class_are_served_in_arrival_order() {
        let gate = Gate::new(Some(1), None);
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = gate.acquire(Priority::Urgent).await;
        let arrivals = [
            (Priority::Background, "b1", (0, 1)),
            (Priority::Urgent, "u1", (1, 1)),
            (Priority::Background, "b2", (1, 2)),
            (Priority::Urgent, "u2", (2, 2)),
            (Priority::Background, "b3", (2, 3)),
            (Priority::Urgent, "u3", (3, 3)),
        ];
        for (priority, name, queued) in arrivals {
            spawn_logged(&gate, priority, name, &log);
            until_waiting(&gate, queued).await;
        }
        assert_eq!(
            log_after_release(first, &gate, &log).await,
            ["u1", "u2", "u3", "b1", "b2", "b3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_queued_waiter_leaks_no_slot() {
        let gate = Gate::new(Some(1), None);
        let first = gate.acquire(Priority::Urgent).await;
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(Priority::Background).await }
        });
        until_waiting(&gate, (0, 1)).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(gate.waiting(), (0, 0));
        drop(first);
        assert_eq!(gate.in_flight(), 0);
        assert!(gate.acquire(Priority::Background).now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_cancelled_after_its_slot_was_handed_over_gives_the_slot_back() {
        let gate = Gate::new(Some(1), None);
        let first = gate.acquire(Priority::Urgent).await;
        let mut queued = Box::pin(gate.acquire(Priority::Background));
        let mut next = Box::pin(gate.acquire(Priority::Background));
        assert!(futures::poll!(&mut queued).is_pending());
        assert!(futures::poll!(&mut next).is_pending());
        drop(first);
        assert_eq!(gate.waiting(), (0, 1), "the slot went to the first waiter");
        drop(queued);
        assert_eq!(gate.waiting(), (0, 0), "and from it to the next one");
        assert_eq!(gate.in_flight(), 1);
        let permit = next.await;
        drop(permit);
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_acquisitions_by_one_over_the_rate() {
        let gate = Gate::new(None, Some(10));
        let start = Instant::now();
        let mut left_at = Vec::new();
        for _ in 0..5 {
            drop(gate.acquire(Priority::Background).await);
            left_at.push(start.elapsed());
        }
        assert_eq!(left_at, [Duration::ZERO, 100 * MS, 200 * MS, 300 * MS, 400 * MS]);

        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = Instant::now();
        let permits = [
            gate.acquire(Priority::Urgent).await,
            gate.acquire(Priority::Urgent).await,
        ];
        assert_eq!(idle.elapsed(), 100 * MS, "an idle gate allows no burst beyond one");
        assert_eq!(gate.in_flight(), 2);
        drop(permits);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_until_delays_every_acquisition_until_then() {
        let gate = Gate::new(None, None);
        let start = Instant::now();
        gate.hold_until(start + Duration::from_secs(5));
        gate.hold_until(start + Duration::from_secs(1));
        assert_eq!(
            gate.held_until(),
            Some(start + Duration::from_secs(5)),
            "an earlier hold changes nothing"
        );
        let permits = futures::future::join_all((0..3).map(|_| gate.acquire(Priority::Urgent))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(permits.len(), 3);
        assert_eq!(gate.held_until(), None, "the hold is over");
        assert!(gate.acquire(Priority::Urgent).now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_set_while_waiting_for_the_pacer_still_applies() {
        let gate = Gate::new(None, Some(1));
        let start = Instant::now();
        drop(gate.acquire(Priority::Background).await);
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _permits = [
                    gate.acquire(Priority::Background).await,
                    gate.acquire(Priority::Background).await,
                ];
                Instant::now()
            }
        });
        tokio::time::sleep(500 * MS).await;
        gate.hold_until(start + Duration::from_secs(3));
        let left_at = waiting.await.unwrap();
        assert_eq!(
            left_at - start,
            Duration::from_secs(4),
            "paced after the hold: 3 s, then 4 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_gate_never_waits() {
        let gate = Gate::new(None, None);
        assert_eq!(gate.limits(), (None, None));
        let permits: Vec<_> = (0..1000)
            .map(|i| {
                let priority = if i % 2 == 0 {
                    Priority::Urgent
                } else {
                    Priority::Background
                };
                gate.acquire(priority).now_or_never().expect("ready at once")
            })
            .collect();
        assert_eq!(gate.in_flight(), 1000);
        drop(permits);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn zero_limits_are_treated_as_one() {
        assert_eq!(Gate::new(Some(0), Some(0)).limits(), (Some(1), Some(1)));
        assert_eq!(Gate::new(Some(8), None).limits(), (Some(8), None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_the_limits_narrows_and_widens_concurrency() {
        let gate = Gate::new(Some(4), None);
        gate.set_share(2);
        let mut held: Vec<GatePermit> = Vec::new();
        for _ in 0..2 {
            held.push(gate.acquire(Priority::Background).await);
        }
        let third = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(Priority::Background).await }
        });
        until_waiting(&gate, (0, 1)).await;
        assert_eq!(gate.in_flight(), 2, "half of 4 for each of 2 instances");
        gate.set_share(1);
        let third = third.await.unwrap();
        assert_eq!(gate.in_flight(), 3, "the wider share admitted the waiter at once");
        gate.set_share(3);
        drop(third);
        drop(held.pop());
        assert_eq!(
            gate.in_flight(),
            1,
            "released slots over the narrower share are given up"
        );
        assert_eq!(gate.share(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_the_rate_spaces_acquisitions_further_apart() {
        let gate = Gate::new(None, Some(10));
        gate.set_share(4);
        let start = Instant::now();
        for _ in 0..3 {
            drop(gate.acquire(Priority::Background).await);
        }
        // 10/s shared by 4: this instance takes one every 400 ms.
        assert_eq!(Instant::now() - start, 800 * MS);
    }
}
