//! When to reconnect a lost controller, when to fail its waiting I/O, when to give up: SPDK's
//! three I/O error resiliency parameters as a pure state machine over the thread's clock (ticks),
//! so its timing is tested on the harness's virtual clock.
//!
//! ```text
//! enabled --failure--> reconnecting now (attempt 1)
//!    attempt fails  --> reconnect_is_delayed until +reconnect_delay_sec, then attempt again
//!    lost for fast_io_fail_timeout_sec  --> waiting and new I/O fail (EIO), attempts go on
//!    lost for ctrlr_loss_timeout_sec    --> delete the controller and its bdevs
//!    an attempt succeeds                --> enabled (the clocks start again at the next loss)
//! ```
//!
//! `ctrlr_loss_timeout_sec` 0 deletes at the first failure; -1 never gives up. SPDK checks the
//! two timeouts when an attempt fails; here they are deadlines, checked on every poll, so the
//! I/O of a controller that takes long to refuse still fails on time.

use serde::{Deserialize, Serialize};

/// The three parameters of `bdev_nvme_attach_controller` / `bdev_nvme_set_options`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectParams {
    pub ctrlr_loss_timeout_sec: i32,
    pub reconnect_delay_sec: u32,
    pub fast_io_fail_timeout_sec: u32,
}

impl ReconnectParams {
    /// SPDK's constraints among the three (`bdev_nvme_check_io_error_resiliency_params`), with
    /// its messages.
    pub fn check(&self) -> Result<(), &'static str> {
        let (loss, delay, fast) = (
            self.ctrlr_loss_timeout_sec,
            self.reconnect_delay_sec,
            self.fast_io_fail_timeout_sec,
        );
        match loss {
            l if l < -1 => Err("ctrlr_loss_timeout_sec can't be less than -1."),
            -1 | 1.. if delay == 0 => {
                Err("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0.")
            }
            -1 if fast != 0 && fast < delay => {
                Err("reconnect_delay_sec can't be more than fast_io-fail_timeout_sec.")
            }
            -1 => Ok(()),
            0 if delay != 0 || fast != 0 => Err(
                "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0.",
            ),
            0 => Ok(()),
            l if delay > l.unsigned_abs() => {
                Err("reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec.")
            }
            _ if fast != 0 && fast < delay => {
                Err("reconnect_delay_sec can't be more than fast_io_fail_timeout_sec.")
            }
            l if fast > l.unsigned_abs() => {
                Err("fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec.")
            }
            _ => Ok(()),
        }
    }
}

/// What the controller must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a reconnect attempt (report its end with `attempt_failed` or `connected`).
    Reconnect,
    /// Fail the I/O waiting for the controller, and new I/O, until it is back.
    FailFast,
    /// Give up: delete the controller and its bdevs.
    Delete,
}

/// Where the controller is in the policy's eyes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Enabled,
    /// An attempt is running.
    Reconnecting,
    /// Waiting `reconnect_delay_sec` before the next attempt.
    Delayed,
    /// Gave up (Delete was returned).
    Lost,
}

#[derive(Clone, Debug)]
pub struct Policy {
    params: ReconnectParams,
    hz: u64,
    /// When the controller was lost (the first failure since it was last enabled).
    lost_at: Option<u64>,
    /// When the next attempt may start (None while one runs).
    next_attempt: Option<u64>,
    fast_failed: bool,
    gave_up: bool,
}

impl Policy {
    /// `hz`: ticks per second of the clock the caller passes (poller::time::ticks_hz()).
    pub fn new(params: ReconnectParams, hz: u64) -> Policy {
        Policy {
            params,
            hz: hz.max(1),
            lost_at: None,
            next_attempt: None,
            fast_failed: false,
            gave_up: false,
        }
    }

    pub fn params(&self) -> ReconnectParams {
        self.params
    }

    pub fn phase(&self) -> Phase {
        match (self.gave_up, self.lost_at, self.next_attempt) {
            (true, _, _) => Phase::Lost,
            (false, None, _) => Phase::Enabled,
            (false, Some(_), None) => Phase::Reconnecting,
            (false, Some(_), Some(_)) => Phase::Delayed,
        }
    }

    /// True while I/O must fail fast.
    pub fn fast_failed(&self) -> bool {
        self.fast_failed
    }

    fn secs(&self, s: u64) -> u64 {
        s.saturating_mul(self.hz)
    }

    /// The controller failed at `now` (a qpair error, a keep alive timeout, a TermReq).
    /// Repeated reports while it is already lost change nothing.
    pub fn failed(&mut self, now: u64) -> Option<Action> {
        if self.gave_up {
            return None;
        }
        if self.lost_at.is_some() {
            return None;
        }
        if self.params.ctrlr_loss_timeout_sec == 0 {
            self.gave_up = true;
            return Some(Action::Delete);
        }
        self.lost_at = Some(now);
        self.next_attempt = None;
        Some(Action::Reconnect)
    }

    /// The running attempt failed at `now`: the next one waits `reconnect_delay_sec`.
    pub fn attempt_failed(&mut self, now: u64) -> Option<Action> {
        if self.gave_up || self.lost_at.is_none() {
            return None;
        }
        self.next_attempt =
            Some(now.saturating_add(self.secs(u64::from(self.params.reconnect_delay_sec))));
        self.poll(now)
    }

    /// The attempt succeeded: enabled again, every clock reset.
    pub fn connected(&mut self) {
        if !self.gave_up {
            self.lost_at = None;
            self.next_attempt = None;
            self.fast_failed = false;
        }
    }

    /// What is due at `now`; call until None. Reconnect is returned once per attempt.
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        let lost_at = self.lost_at?;
        if self.gave_up {
            return None;
        }
        let lost_for = now.saturating_sub(lost_at);
        let loss = self.params.ctrlr_loss_timeout_sec;
        if loss > 0 && lost_for >= self.secs(u64::from(loss.unsigned_abs())) {
            self.gave_up = true;
            return Some(Action::Delete);
        }
        let fast = self.params.fast_io_fail_timeout_sec;
        if !self.fast_failed && fast != 0 && lost_for >= self.secs(u64::from(fast)) {
            self.fast_failed = true;
            return Some(Action::FailFast);
        }
        match self.next_attempt {
            Some(at) if now >= at => {
                self.next_attempt = None;
                Some(Action::Reconnect)
            }
            _ => None,
        }
    }

    /// Ticks until something may become due (for a timer), None when nothing is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        let lost_at = self.lost_at?;
        if self.gave_up {
            return None;
        }
        let mut d = self.next_attempt;
        let mut consider = |t: u64| d = Some(d.map_or(t, |x: u64| x.min(t)));
        let loss = self.params.ctrlr_loss_timeout_sec;
        if loss > 0 {
            consider(lost_at.saturating_add(self.secs(u64::from(loss.unsigned_abs()))));
        }
        let fast = self.params.fast_io_fail_timeout_sec;
        if fast != 0 && !self.fast_failed {
            consider(lost_at.saturating_add(self.secs(u64::from(fast))));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poller::Harness;

    fn p(loss: i32, delay: u32, fast: u32) -> ReconnectParams {
        ReconnectParams {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        }
    }

    #[test]
    fn spdk_constraints() {
        for ok in [
            p(0, 0, 0),
            p(-1, 1, 0),
            p(-1, 2, 2),
            p(-1, 2, 100),
            p(10, 10, 0),
            p(10, 2, 5),
            p(10, 2, 10),
            p(10, 2, 2),
        ] {
            assert_eq!(ok.check(), Ok(()), "{ok:?}");
        }
        let cases = [
            (p(-2, 1, 0), "ctrlr_loss_timeout_sec can't be less than -1."),
            (
                p(-1, 0, 0),
                "reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0.",
            ),
            (
                p(5, 0, 0),
                "reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0.",
            ),
            (
                p(-1, 3, 2),
                "reconnect_delay_sec can't be more than fast_io-fail_timeout_sec.",
            ),
            (
                p(0, 1, 0),
                "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0.",
            ),
            (
                p(0, 0, 1),
                "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0.",
            ),
            (
                p(3, 4, 0),
                "reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec.",
            ),
            (
                p(10, 4, 3),
                "reconnect_delay_sec can't be more than fast_io_fail_timeout_sec.",
            ),
            (
                p(10, 4, 11),
                "fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec.",
            ),
        ];
        for (params, msg) in cases {
            assert_eq!(params.check(), Err(msg), "{params:?}");
        }
    }

    /// Drains every due action at the harness's current time.
    fn due(pol: &mut Policy, h: &Harness) -> Vec<Action> {
        std::iter::from_fn(|| pol.poll(h.now())).collect()
    }

    fn policy(params: ReconnectParams) -> Policy {
        Policy::new(params, poller::time::ticks_hz())
    }

    #[test]
    fn loss_timeout_zero_deletes_at_the_first_failure() {
        let h = Harness::new(1);
        let mut pol = policy(p(0, 0, 0));
        assert_eq!(pol.phase(), Phase::Enabled);
        assert_eq!(pol.failed(h.now()), Some(Action::Delete));
        assert_eq!(pol.phase(), Phase::Lost);
        assert_eq!(pol.poll(h.now()), None);
        assert_eq!(pol.failed(h.now()), None);
    }

    #[test]
    fn reconnect_delay_spaces_the_attempts() {
        let mut h = Harness::new(1);
        let mut pol = policy(p(-1, 2, 0));
        assert_eq!(pol.failed(h.now()), Some(Action::Reconnect));
        assert_eq!(pol.phase(), Phase::Reconnecting);
        // A second report while lost does nothing.
        assert_eq!(pol.failed(h.now()), None);
        h.advance_us(300_000);
        assert_eq!(pol.attempt_failed(h.now()), None);
        assert_eq!(pol.phase(), Phase::Delayed);
        h.advance_us(1_990_000);
        assert!(due(&mut pol, &h).is_empty());
        h.advance_us(20_000);
        assert_eq!(due(&mut pol, &h), [Action::Reconnect]);
        assert_eq!(pol.phase(), Phase::Reconnecting);
        // Forever (-1): an hour of failed attempts never deletes.
        for _ in 0..1800 {
            assert_eq!(pol.attempt_failed(h.now()), None);
            h.advance_us(2_000_000);
            assert_eq!(due(&mut pol, &h), [Action::Reconnect]);
        }
        pol.connected();
        assert_eq!(pol.phase(), Phase::Enabled);
        assert_eq!(pol.next_deadline(), None);
    }

    #[test]
    fn fast_io_fail_fires_once_and_reconnects_go_on() {
        let mut h = Harness::new(1);
        let mut pol = policy(p(10, 1, 3));
        assert_eq!(pol.failed(h.now()), Some(Action::Reconnect));
        for _ in 0..2 {
            h.advance_us(100_000);
            assert_eq!(pol.attempt_failed(h.now()), None);
            h.advance_us(1_010_000);
            assert_eq!(due(&mut pol, &h), [Action::Reconnect]);
        }
        // Lost 2.22 s; this attempt fails at 2.70 s, the next is due at 3.70 s; fast-fail at 3 s.
        h.advance_us(480_000);
        assert_eq!(pol.attempt_failed(h.now()), None);
        h.advance_us(280_000);
        assert!(due(&mut pol, &h).is_empty());
        assert!(!pol.fast_failed());
        h.advance_us(40_000);
        assert_eq!(due(&mut pol, &h), [Action::FailFast]);
        assert!(pol.fast_failed());
        assert!(due(&mut pol, &h).is_empty());
        h.advance_us(700_000);
        assert_eq!(due(&mut pol, &h), [Action::Reconnect]);
        // Reconnected: I/O flows again, and the next loss starts every clock afresh.
        pol.connected();
        assert!(!pol.fast_failed());
        h.advance_us(60_000_000);
        assert_eq!(pol.failed(h.now()), Some(Action::Reconnect));
        h.advance_us(2_990_000);
        assert!(due(&mut pol, &h).is_empty());
        h.advance_us(20_000);
        assert_eq!(due(&mut pol, &h), [Action::FailFast]);
    }

    #[test]
    fn loss_timeout_deletes_even_during_an_attempt() {
        let mut h = Harness::new(1);
        let mut pol = policy(p(5, 2, 0));
        let t0 = h.now();
        assert_eq!(pol.failed(t0), Some(Action::Reconnect));
        h.advance_us(1_000_000);
        assert_eq!(pol.attempt_failed(h.now()), None);
        assert_eq!(
            pol.next_deadline(),
            Some(h.now() + 2 * poller::time::ticks_hz())
        );
        h.advance_us(2_010_000);
        assert_eq!(due(&mut pol, &h), [Action::Reconnect]);
        // This attempt hangs past the 5 s deadline: the poll deletes anyway.
        h.advance_us(1_980_000);
        assert!(due(&mut pol, &h).is_empty());
        assert_eq!(pol.next_deadline(), Some(t0 + 5 * poller::time::ticks_hz()));
        h.advance_us(20_000);
        assert_eq!(due(&mut pol, &h), [Action::Delete]);
        assert_eq!(pol.phase(), Phase::Lost);
        assert_eq!(pol.attempt_failed(h.now()), None);
        pol.connected();
        assert_eq!(pol.phase(), Phase::Lost);
    }

    #[test]
    fn fast_fail_and_loss_due_together_come_out_in_order() {
        let mut h = Harness::new(1);
        let mut pol = policy(p(4, 4, 4));
        assert_eq!(pol.failed(h.now()), Some(Action::Reconnect));
        h.advance_us(10_000_000);
        // The loss deadline wins outright: the controller goes, nothing else matters.
        assert_eq!(due(&mut pol, &h), [Action::Delete]);
    }
}
