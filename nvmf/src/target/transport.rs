//! The TCP transport: created once by `nvmf_create_transport`, its options read by every
//! listener and qpair afterwards (they never change once created, as in SPDK).

use crate::target::TargetError;
use crate::target::options::TransportOptions;
use std::sync::{Arc, RwLock};

static TRANSPORT: RwLock<Option<Arc<TransportOptions>>> = RwLock::new(None);

/// The TCP transport's options, once it exists.
pub fn options() -> Option<Arc<TransportOptions>> {
    TRANSPORT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn create(mut opts: TransportOptions) -> Result<(), TargetError> {
    opts.check()?;
    let mut t = TRANSPORT.write().unwrap_or_else(|p| p.into_inner());
    if t.is_some() {
        return Err(TargetError::Exists(format!(
            "Transport type '{}' already exists",
            opts.trtype
        )));
    }
    tracing::info!(
        max_queue_depth = opts.max_queue_depth,
        in_capsule_data_size = opts.in_capsule_data_size,
        max_io_size = opts.max_io_size,
        "TCP transport created"
    );
    *t = Some(Arc::new(opts));
    Ok(())
}

/// Forgets the transport (target shutdown).
pub fn destroy() {
    *TRANSPORT.write().unwrap_or_else(|p| p.into_inner()) = None;
}
