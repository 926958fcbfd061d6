//! The admin queue's standing duties once the controller is ready: an Asynchronous Event
//! Request kept outstanding (a namespace notice starts a rescan) and the Keep Alive period.

use super::{Ctrlr, HostError, Step, us};
use crate::host::qpair::OWN_LEN;
use crate::wire::command::{Cqe, Sgl, Sqe, Xfer, admin};
use crate::wire::features::AsyncEvent;
use crate::wire::log::{GetLogPage, lid};

impl Ctrlr {
    pub(super) fn arm_aer(&mut self) {
        if !self.aer_wanted || self.aer_cid.is_some() || self.step != Step::Ready {
            return;
        }
        let sqe = Sqe::new(admin::ASYNC_EVENT_REQUEST, 0, 0);
        match self.submit(sqe, Xfer::None, 0) {
            Ok(cid) => self.aer_cid = Some(cid),
            Err(e) => tracing::warn!(
                "nvme controller {}: cannot send an AER: {e}",
                self.sh.spec.name
            ),
        }
    }

    pub(super) fn aer_done(&mut self, cqe: Cqe, _now: u64) -> Result<(), HostError> {
        if !cqe.status.is_success() {
            // Aborted at a reset or refused: do not insist.
            tracing::debug!(
                "nvme controller {}: AER completed with {}",
                self.sh.spec.name,
                cqe.status
            );
            return Ok(());
        }
        let ev = AsyncEvent::from_dw0(cqe.dw0);
        tracing::info!(
            "nvme controller {}: asynchronous event type {} info {:#x} log page {:#x}",
            self.sh.spec.name,
            ev.event_type,
            ev.info,
            ev.log_page
        );
        if ev == AsyncEvent::NS_ATTR_CHANGED {
            // Reading the Changed Namespace List clears the event; then rescan.
            let sqe = GetLogPage::bytes(lid::CHANGED_NS, 0, OWN_LEN as u32).to_sqe(
                0,
                u32::MAX,
                Sgl::transport(0),
            );
            match self.submit(sqe, Xfer::ControllerToHost, OWN_LEN) {
                Ok(cid) => self.log_cid = Some(cid),
                Err(_) => self.rescan_pending = true,
            }
        } else if ev.log_page != 0 {
            // Read (and so clear) whatever log the event points at, so events keep coming.
            let sqe = GetLogPage::bytes(ev.log_page, 0, 512).to_sqe(0, u32::MAX, Sgl::transport(0));
            let _ = self.submit(sqe, Xfer::ControllerToHost, 512);
        }
        self.arm_aer();
        Ok(())
    }

    pub(super) fn ka_period(&self) -> u64 {
        if self.kato_ms == 0 {
            u64::MAX
        } else {
            us(self.hz, u64::from(self.kato_ms) * 500)
        }
    }
}
