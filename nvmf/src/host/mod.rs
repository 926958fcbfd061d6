//! The NVMe-oF/TCP initiator as a bdev module (SPDK's bdev_nvme for the TCP transport): a
//! namespace of a remote controller becomes a local bdev `<name>n<nsid>`.
//!
//! ```text
//! rpc         bdev_nvme_attach_controller / detach / get_controllers / set_options
//! options     the module's global options (bdev_nvme_set_options)
//! controller  a controller: admin queue, attach sequence, keep alive, AEN, reset, delete
//! reconnect   when to reconnect, fail I/O fast, give up (pure, over the thread's clock)
//! channel     a thread's I/O qpair to a controller and the I/O waiting for it
//! io          a bdev I/O as NVMe commands
//! qpair       one NVMe/TCP queue pair: handshake, command slots, PDUs in and out
//! socket      the non-blocking TCP socket under a qpair
//! error       HostError
//! ```
//!
//! The admin queue of every controller is polled on the app thread; each thread that opens one
//! of its bdevs gets its own I/O qpair, polled by that thread. Nothing blocks a reactor: TCP
//! connects, the handshake and the attach sequence are state machines.

mod channel;
pub mod controller;
pub mod error;
mod io;
pub mod options;
mod qpair;
pub mod reconnect;
pub mod rpc;
mod socket;

use crate::host::channel::NsChannel;
use crate::host::controller::{NsFound, Shared, State};
use crate::host::error::HostError;
use crate::wire::identify::{IdentifyController, oncs, vwc};
use bdev::{Bdev, BdevChannelOps, BdevError, BdevModule, BdevOps, BdevProps, IoType};
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

pub const MODULE: &str = "nvme";
const PRODUCT_NAME: &str = "NVMe disk";

/// One namespace's bdev.
struct NvmeBdev {
    sh: Arc<Shared>,
    nsid: u32,
    vwc: bool,
    oncs: u16,
    model: String,
    serial: String,
    firmware: String,
    cntlid: u16,
}

impl BdevOps for NvmeBdev {
    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::WriteZeroes => self.oncs & oncs::WRITE_ZEROES != 0,
            IoType::Unmap => self.oncs & oncs::DSM != 0,
            IoType::Reset => false,
        }
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        let q = self.sh.io_device.get_channel().map_err(|e| {
            BdevError::io(
                e,
                format!(
                    "nvme controller {}: no I/O queue for this thread",
                    self.sh.spec.name
                ),
            )
        })?;
        Ok(Rc::new(NsChannel::new(q, self.nsid, self.vwc)))
    }

    fn dump_info_json(&self) -> Value {
        json!({"nvme": [{
            "trid": self.sh.spec.trid.to_json(),
            "ctrlr_data": {
                "cntlid": self.cntlid,
                "model_number": self.model,
                "serial_number": self.serial,
                "firmware_revision": self.firmware,
                "subnqn": self.sh.spec.trid.subnqn,
            },
            "ns_data": {"id": self.nsid},
        }]})
    }
}

/// Registers the bdev of namespace `f` (app thread).
pub(crate) fn register_bdev(
    sh: &Arc<Shared>,
    f: &NsFound,
    uuid: Option<Uuid>,
    cd: &IdentifyController,
) -> Result<Bdev, HostError> {
    let name = format!("{}n{}", sh.spec.name, f.nsid);
    let ops = Arc::new(NvmeBdev {
        sh: sh.clone(),
        nsid: f.nsid,
        vwc: cd.vwc & vwc::PRESENT != 0,
        oncs: cd.oncs,
        model: cd.mn.as_str().to_string(),
        serial: cd.sn.as_str().to_string(),
        firmware: cd.fr.as_str().to_string(),
        cntlid: cd.cntlid,
    });
    let mut props = BdevProps::new(&name, MODULE, PRODUCT_NAME, f.block_size, f.num_blocks);
    props.uuid = uuid;
    props.write_cache = ops.vwc;
    match Bdev::register(props.clone(), ops.clone()) {
        Ok(b) => Ok(b),
        // The namespace's UUID is already some local bdev's (a loop back to our own target):
        // this one gets a fresh UUID rather than no bdev.
        Err(BdevError::Exists(dup)) if uuid.is_some_and(|u| u.to_string() == dup) => {
            tracing::warn!(
                "{name}: UUID {dup} of namespace {} is already in use here; using a random one",
                f.nsid
            );
            props.uuid = None;
            Bdev::register(props, ops).map_err(|e| HostError::invalid(e.to_string()))
        }
        Err(e) => Err(HostError::Io {
            errno: e.errno(),
            msg: format!("cannot register {name}: {e}"),
        }),
    }
}

/// The module: its save_config entries and its shutdown.
struct NvmeModule;

impl BdevModule for NvmeModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    fn fini(&self) {
        controller::fini();
    }

    /// bdev_nvme_set_options, bdev_nvme_set_hotplug, then one bdev_nvme_attach_controller per
    /// controller (SPDK's order), so a restart with the saved config attaches again. SPDK
    /// writes the two settings always; here only when a controller exists or the options
    /// changed, so a target that never used the initiator saves nothing of it.
    fn config_json(&self) -> Vec<Value> {
        let ctrlrs: Vec<Value> = controller::all()
            .iter()
            .filter(|c| !matches!(c.state(), State::Attaching | State::Deleting))
            .map(|c| c.spec.to_config_json())
            .collect();
        let opts = options::get();
        if ctrlrs.is_empty() && opts == options::NvmeOptions::default() {
            return Vec::new();
        }
        let mut out = vec![
            json!({"method": "bdev_nvme_set_options", "params": opts.to_json()}),
            json!({"method": "bdev_nvme_set_hotplug", "params": {"period_us": 100000, "enable": false}}),
        ];
        out.extend(ctrlrs);
        out
    }
}

/// Registers the module (idempotent).
pub fn register_module() {
    bdev::register_module(Arc::new(NvmeModule));
}
