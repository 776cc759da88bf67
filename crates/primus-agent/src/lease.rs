//! The lease decision, without I/O: given what the coordinators answered and when
//! each request was *sent* (monotonic time), must the server be read-only now?
//!
//! Time is always passed in (`now`, `sent_at`), so the logic is tested with a fake
//! clock; the agent feeds it `tokio::time::Instant::now()` — never wall-clock time.
//!
//! Rules (docs/fencing.md):
//! * A grant makes the server's writes legal until `sent_at + min(ttl asked, ttl
//!   granted)`. The leader counts from when it *received* the request, which is
//!   later, so the agent's lease always ends first.
//! * `fence_now`: read-only at once, whatever lease is held.
//! * `being_promoted` (without `fence_now`): the coordinators are making this
//!   server the primary; it is not fenced, and the answer counts as a lease of the
//!   requested length, so the candidate is fenced only if the coordinators then
//!   stop answering.
//! * Any other refusal: read-only once any lease held has run out. A server that
//!   never held a lease and is refused without `fence_now` (an ordinary replica,
//!   reason `not_primary`) is left alone, as the coordinators leave it.
//!   Such a refusal can be older than the server's state: a replica refused
//!   `not_primary` may be promoted by a switchover just as the lease it held as an
//!   earlier primary runs out. So before fencing a *writable* server on a refusal
//!   (`FenceReason::needs_confirmation`), the agent asks again and decides on an
//!   answer to a request sent after it saw the server writable
//!   (`answered_since`): the coordinators answer `being_promoted` (or grant) from the
//!   moment a failover to this server is committed, before they make it writable.
//! * No answer at all since start: read-only `ttl` after start (the agent cannot
//!   confirm its server may take writes).
//! * `not_leader` answers count as no answer (a node without a leader knows nothing).
//!
//! The agent never makes the server writable: a grant after fencing only means that
//! a server the *coordinators* make writable again may stay so.

use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// What one renewal produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Granted {
        ttl_ms: u64,
        epoch: u64,
    },
    Refused {
        reason: String,
        fence_now: bool,
        epoch: u64,
    },
    /// No usable answer (unreachable, timed out, UNIMPLEMENTED, not_leader...).
    NoAnswer,
}

impl Answer {
    pub fn from_response(r: &primus_client::RenewLeaseResponse) -> Answer {
        if r.granted && !r.fence_now {
            Answer::Granted { ttl_ms: r.ttl_ms, epoch: r.epoch }
        } else if !r.fence_now && r.reason == "not_leader" {
            Answer::NoAnswer
        } else {
            Answer::Refused { reason: r.reason.clone(), fence_now: r.fence_now, epoch: r.epoch }
        }
    }
}

/// Why the server must be read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// A lease (or promotion permit) was held and ran out without renewal.
    LeaseExpired,
    /// The coordinators said `fence_now` (reason given).
    FenceNow(String),
    /// Refused with this reason and no lease left.
    Refused(String),
    /// No answer from any coordinator since start, for a whole TTL.
    NeverConfirmed,
}

impl FenceReason {
    /// A refusal may predate a promotion of this very server (see the module docs):
    /// a writable server is fenced on it only after a fresh answer confirms it.
    /// Every other reason is acted on at once.
    pub fn needs_confirmation(&self) -> bool {
        matches!(self, FenceReason::Refused(_))
    }
}

impl fmt::Display for FenceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceReason::LeaseExpired => write!(f, "lease expired (no renewal in time)"),
            FenceReason::FenceNow(r) => write!(f, "coordinators said fence_now (reason {r:?})"),
            FenceReason::Refused(r) => write!(f, "lease refused (reason {r:?}) and none left"),
            FenceReason::NeverConfirmed => write!(f, "no coordinator answered since start for a whole TTL"),
        }
    }
}

/// What changed with an answer, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A lease was granted (or extended) until the given instant.
    Granted {
        until: Instant,
        epoch: u64,
    },
    /// Granted while the server is (or was) fenced: the agent does not unfence.
    GrantedWhileFenced {
        until: Instant,
        epoch: u64,
    },
    Promoting {
        until: Instant,
        epoch: u64,
    },
    Refused {
        reason: String,
        fence_now: bool,
        epoch: u64,
    },
    NoAnswer,
}

#[derive(Debug, Clone)]
pub struct LeaseState {
    ttl: Duration,
    started: Instant,
    /// End of the lease (or promotion permit) held, if any was ever held.
    lease_until: Option<Instant>,
    /// Any authoritative answer since start.
    answered: bool,
    /// The last answer said fence_now (cleared by a grant).
    fence_now: Option<String>,
    /// The last authoritative answer refused (cleared by a grant or being_promoted).
    refused: Option<String>,
    /// Set once the agent decided to fence; only for reporting grants after it.
    fenced_once: bool,
    /// When the request behind the newest authoritative answer was sent.
    answered_sent_at: Option<Instant>,
    pub epoch: u64,
}

impl LeaseState {
    pub fn new(ttl: Duration, started: Instant) -> LeaseState {
        LeaseState {
            ttl,
            started,
            lease_until: None,
            answered: false,
            fence_now: None,
            refused: None,
            fenced_once: false,
            answered_sent_at: None,
            epoch: 0,
        }
    }

    /// Apply the answer to a request sent at `sent_at`.
    pub fn on_answer(&mut self, sent_at: Instant, answer: &Answer) -> Event {
        if *answer != Answer::NoAnswer {
            self.answered_sent_at = Some(self.answered_sent_at.map_or(sent_at, |t| t.max(sent_at)));
        }
        match answer {
            Answer::NoAnswer => Event::NoAnswer,
            Answer::Granted { ttl_ms, epoch } => {
                self.answered = true;
                self.epoch = self.epoch.max(*epoch);
                self.fence_now = None;
                self.refused = None;
                let ttl = self.ttl.min(Duration::from_millis(*ttl_ms));
                let until = self.extend(sent_at + ttl);
                if self.fenced_once {
                    Event::GrantedWhileFenced { until, epoch: *epoch }
                } else {
                    Event::Granted { until, epoch: *epoch }
                }
            }
            Answer::Refused { reason, fence_now, epoch } => {
                self.answered = true;
                self.epoch = self.epoch.max(*epoch);
                if *fence_now {
                    self.fence_now = Some(reason.clone());
                    self.lease_until = self.lease_until.map(|u| u.min(sent_at));
                } else if reason == "being_promoted" {
                    self.fence_now = None;
                    self.refused = None;
                    let until = self.extend(sent_at + self.ttl);
                    return Event::Promoting { until, epoch: *epoch };
                } else {
                    self.fence_now = None;
                    self.refused = Some(reason.clone());
                }
                Event::Refused { reason: reason.clone(), fence_now: *fence_now, epoch: *epoch }
            }
        }
    }

    fn extend(&mut self, until: Instant) -> Instant {
        let u = self.lease_until.map_or(until, |old| old.max(until));
        self.lease_until = Some(u);
        u
    }

    /// Whether the server must be read-only at `now`, and why.
    pub fn must_fence(&self, now: Instant) -> Option<FenceReason> {
        if let Some(r) = &self.fence_now {
            return Some(FenceReason::FenceNow(r.clone()));
        }
        match self.lease_until {
            Some(u) if now < u => return None,
            Some(_) => {
                return Some(match &self.refused {
                    Some(r) => FenceReason::Refused(r.clone()),
                    None => FenceReason::LeaseExpired,
                })
            }
            None => {}
        }
        // Refused without fence_now and no lease ever held: an ordinary replica,
        // which the coordinators leave alone (and so does the agent).
        if !self.answered && now >= self.started + self.ttl {
            return Some(FenceReason::NeverConfirmed);
        }
        None
    }

    /// When `must_fence` may next change without a new answer (lease end or end
    /// of the start-up grace), if that is in the future.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let grace = (!self.answered).then_some(self.started + self.ttl);
        [self.lease_until, grace].into_iter().flatten().filter(|t| *t > now).min()
    }

    /// True while a lease (or promotion permit) is held at `now`.
    pub fn holds_lease(&self, now: Instant) -> bool {
        self.fence_now.is_none() && self.lease_until.is_some_and(|u| now < u)
    }

    pub fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    /// Whether an authoritative answer came to a request sent at or after `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        self.answered_sent_at.is_some_and(|s| s >= t)
    }

    /// Record that the agent fenced the server.
    pub fn mark_fenced(&mut self) {
        self.fenced_once = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(1500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn granted(ttl_ms: u64) -> Answer {
        Answer::Granted { ttl_ms, epoch: 3 }
    }

    fn refused(reason: &str, fence_now: bool) -> Answer {
        Answer::Refused { reason: reason.into(), fence_now, epoch: 3 }
    }

    /// A replica that was primary earlier: refused `not_primary`, its old lease runs
    /// out just as a switchover promotes it. The refusal alone asks for a fence, but it
    /// must be confirmed; the fresh answer (`being_promoted`, sent after the server was
    /// seen writable) lifts it, and an answer to an older request does not count.
    #[test]
    fn a_refusal_that_predates_a_promotion_is_confirmed_before_it_fences() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &granted(1500));
        s.on_answer(t0 + ms(300), &refused("not_primary", false));
        let seen_writable = t0 + ms(1600);
        let r = s.must_fence(seen_writable).expect("the old lease ran out");
        assert_eq!(r, FenceReason::Refused("not_primary".into()));
        assert!(r.needs_confirmation());
        assert!(!s.answered_since(seen_writable));
        // An answer to a request sent before the server was seen writable: not fresh.
        s.on_answer(seen_writable - ms(1), &refused("not_primary", false));
        assert!(!s.answered_since(seen_writable));
        // No answer at all: not fresh either.
        s.on_answer(seen_writable + ms(5), &Answer::NoAnswer);
        assert!(!s.answered_since(seen_writable));
        s.on_answer(seen_writable + ms(10), &refused("being_promoted", false));
        assert!(s.answered_since(seen_writable));
        assert_eq!(s.must_fence(seen_writable + ms(20)), None);
        // Other reasons are never held back.
        assert!(!FenceReason::LeaseExpired.needs_confirmation());
        assert!(!FenceReason::FenceNow("failover_in_progress".into()).needs_confirmation());
        assert!(!FenceReason::NeverConfirmed.needs_confirmation());
    }

    #[test]
    fn lease_is_counted_from_send_time_not_answer_time() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        // Sent at t0+100, answered (slowly) at t0+900: valid until t0+1600, not t0+2400.
        s.on_answer(t0 + ms(100), &granted(1500));
        assert_eq!(s.lease_until(), Some(t0 + ms(1600)));
        assert_eq!(s.must_fence(t0 + ms(1599)), None);
        assert_eq!(s.must_fence(t0 + ms(1600)), Some(FenceReason::LeaseExpired));
    }

    #[test]
    fn shorter_granted_ttl_wins_over_requested() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &granted(1000));
        assert_eq!(s.lease_until(), Some(t0 + ms(1000)));
        // A longer grant than asked for is capped at what the agent asked.
        s.on_answer(t0 + ms(300), &granted(5000));
        assert_eq!(s.lease_until(), Some(t0 + ms(1800)));
    }

    #[test]
    fn renewals_keep_the_lease_and_missed_ones_let_it_run_out() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        for k in 0..10 {
            s.on_answer(t0 + ms(300 * k), &granted(1500));
            assert_eq!(s.must_fence(t0 + ms(300 * k + 299)), None);
        }
        // Last grant sent at 2700: no answer afterwards.
        for k in 10..14 {
            s.on_answer(t0 + ms(300 * k), &Answer::NoAnswer);
        }
        assert_eq!(s.must_fence(t0 + ms(4199)), None);
        assert_eq!(s.must_fence(t0 + ms(4200)), Some(FenceReason::LeaseExpired));
        assert_eq!(s.next_deadline(t0 + ms(4000)), Some(t0 + ms(4200)));
    }

    #[test]
    fn grant_after_expiry_does_not_unfence_but_reports_it() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &granted(1500));
        assert_eq!(s.must_fence(t0 + ms(2000)), Some(FenceReason::LeaseExpired));
        s.mark_fenced();
        let e = s.on_answer(t0 + ms(3000), &granted(1500));
        assert_eq!(e, Event::GrantedWhileFenced { until: t0 + ms(4500), epoch: 3 });
        // The lease is valid again (a server the coordinators make writable may
        // stay so), but nothing in the state says "make it writable".
        assert_eq!(s.must_fence(t0 + ms(3100)), None);
        assert!(s.holds_lease(t0 + ms(3100)));
    }

    #[test]
    fn fence_now_fences_at_once_even_with_a_valid_lease() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &granted(1500));
        s.on_answer(t0 + ms(300), &refused("not_primary", true));
        assert_eq!(s.must_fence(t0 + ms(301)), Some(FenceReason::FenceNow("not_primary".into())));
        assert!(!s.holds_lease(t0 + ms(301)));
        // A replica that never held a lease: fenced at once as well.
        let mut r = LeaseState::new(TTL, t0);
        r.on_answer(t0, &refused("not_primary", true));
        assert_eq!(r.must_fence(t0), Some(FenceReason::FenceNow("not_primary".into())));
    }

    #[test]
    fn being_promoted_does_not_fence_while_coordinators_answer() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        for k in 0..20 {
            let e = s.on_answer(t0 + ms(300 * k), &refused("being_promoted", false));
            assert!(matches!(e, Event::Promoting { .. }));
            assert_eq!(s.must_fence(t0 + ms(300 * k + 299)), None, "fenced a promotion candidate at step {k}");
        }
        // Promotion done: granted.
        s.on_answer(t0 + ms(6000), &granted(1500));
        assert_eq!(s.must_fence(t0 + ms(7000)), None);
        // If the coordinators vanish mid-promotion, the candidate is fenced once
        // the last permit ran out.
        let mut c = LeaseState::new(TTL, t0);
        c.on_answer(t0, &refused("being_promoted", false));
        assert_eq!(c.must_fence(t0 + ms(1500)), Some(FenceReason::LeaseExpired));
    }

    #[test]
    fn refusal_fences_only_after_the_held_lease_ran_out() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &granted(1500));
        s.on_answer(t0 + ms(300), &refused("failover_in_progress", false));
        assert_eq!(s.must_fence(t0 + ms(1499)), None);
        assert_eq!(s.must_fence(t0 + ms(1500)), Some(FenceReason::Refused("failover_in_progress".into())));
    }

    #[test]
    fn replica_refused_without_fence_now_is_left_alone() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        for k in 0..20 {
            s.on_answer(t0 + ms(300 * k), &refused("not_primary", false));
        }
        assert_eq!(s.must_fence(t0 + ms(6000)), None);
        // ... also when the coordinators then stop answering: it answered before.
        assert_eq!(s.must_fence(t0 + ms(60_000)), None);
    }

    #[test]
    fn startup_without_any_answer_fences_after_ttl() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        for k in 0..5 {
            s.on_answer(t0 + ms(300 * k), &Answer::NoAnswer);
        }
        assert_eq!(s.must_fence(t0 + ms(1499)), None);
        assert_eq!(s.next_deadline(t0 + ms(1000)), Some(t0 + ms(1500)));
        assert_eq!(s.must_fence(t0 + ms(1500)), Some(FenceReason::NeverConfirmed));
    }

    #[test]
    fn not_leader_counts_as_no_answer() {
        let r = primus_client::RenewLeaseResponse { reason: "not_leader".into(), ..Default::default() };
        assert_eq!(Answer::from_response(&r), Answer::NoAnswer);
        let t0 = Instant::now();
        let mut s = LeaseState::new(TTL, t0);
        s.on_answer(t0, &Answer::from_response(&r));
        assert_eq!(s.must_fence(t0 + ms(100)), None);
        assert_eq!(s.must_fence(t0 + ms(1500)), Some(FenceReason::NeverConfirmed));
    }

    #[test]
    fn granted_with_fence_now_is_treated_as_fence_now() {
        let r = primus_client::RenewLeaseResponse {
            granted: true,
            fence_now: true,
            ttl_ms: 1500,
            reason: "not_primary".into(),
            ..Default::default()
        };
        assert!(matches!(Answer::from_response(&r), Answer::Refused { fence_now: true, .. }));
    }
}
