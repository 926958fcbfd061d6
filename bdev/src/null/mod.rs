//! The null bdev: completes every I/O at once without touching data (reads return whatever the
//! buffer held). It measures the cost of the stack itself.

pub mod rpc;

use crate::{Bdev, BdevChannelOps, BdevError, BdevIo, BdevOps, BdevProps, IoType};
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;

pub const MODULE: &str = "null";

pub struct NullBdev {
    params: rpc::NullCreateParams,
}

struct NullChannel;

impl BdevChannelOps for NullChannel {
    fn submit_request(&self, io: BdevIo) {
        io.complete_ok();
    }
}

impl BdevOps for NullBdev {
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(
            t,
            IoType::Read | IoType::Write | IoType::WriteZeroes | IoType::Reset
        )
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        Ok(Rc::new(NullChannel))
    }

    fn write_config_json(&self) -> Option<Value> {
        Some(json!({"method": "bdev_null_create", "params": self.params}))
    }
}

pub fn create(mut params: rpc::NullCreateParams) -> Result<Bdev, BdevError> {
    params.check()?;
    let uuid = params.uuid.unwrap_or_else(uuid::Uuid::new_v4);
    params.uuid = Some(uuid);
    let mut props = BdevProps::new(
        &params.name,
        MODULE,
        "Null disk",
        params.block_size,
        params.num_blocks,
    );
    props.uuid = Some(uuid);
    Bdev::register(props, Arc::new(NullBdev { params }))
}

pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    Bdev::unregister_module_bdev(MODULE, name, done)
}
