//! The TCP transport's options: `nvmf_create_transport`'s parameters with SPDK's names and
//! defaults, checked once, and written back by `nvmf_get_transports` and save_config in SPDK's
//! order.

use crate::target::TargetError;
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest in-capsule data the admin queue and fabrics commands accept whatever
/// `in_capsule_data_size` says: the Linux host always allows 8 KiB there.
pub const ADMIN_IN_CAPSULE_DATA: u32 = 8192;

fn d_max_queue_depth() -> u16 {
    128
}
fn d_max_io_qpairs() -> u16 {
    127
}
fn d_in_capsule() -> u32 {
    4096
}
fn d_max_io_size() -> u32 {
    131072
}
fn d_max_aq_depth() -> u32 {
    128
}
fn d_num_shared_buffers() -> u32 {
    511
}
fn d_u32_max() -> u32 {
    u32::MAX
}
fn d_true() -> bool {
    true
}
fn d_control_msg_num() -> u16 {
    32
}
fn d_abort_timeout() -> u32 {
    1
}
fn d_acceptor_poll_rate() -> u32 {
    10_000
}
fn d_kas() -> u16 {
    100
}
fn d_min_kato() -> u32 {
    10_000
}

/// `nvmf_create_transport`'s parameters. RDMA and VFIO-USER options that save_config writes for
/// every transport are accepted (a config written by SPDK loads) and have no effect on TCP.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportOptions {
    pub trtype: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default = "d_max_queue_depth")]
    pub max_queue_depth: u16,
    #[serde(default = "d_max_io_qpairs")]
    pub max_io_qpairs_per_ctrlr: u16,
    #[serde(default = "d_in_capsule")]
    pub in_capsule_data_size: u32,
    #[serde(default = "d_max_io_size")]
    pub max_io_size: u32,
    #[serde(default)]
    pub io_unit_size: Option<u32>,
    #[serde(default = "d_max_aq_depth")]
    pub max_aq_depth: u32,
    /// Large data buffers (max_io_size each) per poll group: I/O larger than the in-capsule size
    /// takes one, and waits for one when all are in use.
    #[serde(default = "d_num_shared_buffers")]
    pub num_shared_buffers: u32,
    #[serde(default)]
    pub buf_cache_size: Option<u32>,
    #[serde(default = "d_u32_max")]
    pub iobuf_small_cache_size: u32,
    #[serde(default = "d_u32_max")]
    pub iobuf_large_cache_size: u32,
    #[serde(default)]
    pub zcopy: bool,
    #[serde(default = "d_true")]
    pub c2h_success: bool,
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    #[serde(default)]
    pub sock_priority: u32,
    #[serde(default = "d_control_msg_num")]
    pub control_msg_num: u16,
    #[serde(default = "d_abort_timeout")]
    pub abort_timeout_sec: u32,
    #[serde(default = "d_acceptor_poll_rate")]
    pub acceptor_poll_rate: u32,
    #[serde(default)]
    pub disable_command_passthru: bool,
    #[serde(default = "d_kas")]
    pub kas: u16,
    #[serde(default = "d_min_kato")]
    pub min_kato: u32,
    /// ONCS / FUSES bits to hide from hosts; not supported (refused unless empty).
    #[serde(default)]
    pub masked_oncs: Option<Value>,
    #[serde(default)]
    pub masked_fuses: Option<Value>,
    // RDMA / VFIO-USER only.
    #[serde(default)]
    pub ack_timeout: u32,
    #[serde(default)]
    pub data_wr_pool_size: u32,
    #[serde(default)]
    pub num_cqe: Option<i64>,
    #[serde(default)]
    pub max_srq_depth: Option<u32>,
    #[serde(default)]
    pub no_srq: Option<bool>,
    #[serde(default)]
    pub acceptor_backlog: Option<i32>,
    #[serde(default)]
    pub no_wr_batching: Option<bool>,
    #[serde(default)]
    pub disable_mappable_bar0: Option<bool>,
    #[serde(default)]
    pub disable_adaptive_irq: Option<bool>,
    #[serde(default)]
    pub disable_shadow_doorbells: Option<bool>,
}

impl TransportOptions {
    /// The defaults of a TCP transport (`nvmf_create_transport -t TCP`).
    pub fn tcp() -> TransportOptions {
        serde_json::from_value(json!({"trtype": "TCP"}))
            .unwrap_or_else(|_| unreachable!("static parameters"))
    }

    /// Checks the options as SPDK does and settles the derived ones.
    pub fn check(&mut self) -> Result<(), TargetError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(TargetError::invalid(format!(
                "Transport type '{}' is not supported (only TCP)",
                self.trtype
            )));
        }
        self.trtype = "TCP".into();
        if self.tgt_name.is_some() {
            return Err(TargetError::invalid(
                "tgt_name: only the default target exists",
            ));
        }
        if self.max_queue_depth < 2 {
            return Err(TargetError::invalid(format!(
                "max_queue_depth {} is below 2",
                self.max_queue_depth
            )));
        }
        // The Linux host's admin queue has 32 entries.
        if !(32..=4096).contains(&self.max_aq_depth) {
            return Err(TargetError::invalid(format!(
                "max_aq_depth {} is outside 32..4096",
                self.max_aq_depth
            )));
        }
        if self.max_io_size < 4096 || !self.max_io_size.is_multiple_of(4096) {
            return Err(TargetError::invalid(format!(
                "max_io_size {} is not a multiple of 4096",
                self.max_io_size
            )));
        }
        if self.max_io_size > 1 << 20 {
            return Err(TargetError::invalid(format!(
                "max_io_size {} is above 1 MiB",
                self.max_io_size
            )));
        }
        if !self.in_capsule_data_size.is_multiple_of(16) {
            return Err(TargetError::invalid(format!(
                "in_capsule_data_size {} is not a multiple of 16",
                self.in_capsule_data_size
            )));
        }
        self.in_capsule_data_size = self.in_capsule_data_size.min(self.max_io_size);
        if self.max_io_qpairs_per_ctrlr == 0 {
            return Err(TargetError::invalid(
                "max_io_qpairs_per_ctrlr must be at least 1",
            ));
        }
        if self.num_shared_buffers == 0 {
            return Err(TargetError::invalid(
                "num_shared_buffers must be at least 1",
            ));
        }
        if self.sock_priority > 16 {
            return Err(TargetError::invalid(format!(
                "sock_priority {} is above 16",
                self.sock_priority
            )));
        }
        if self.dif_insert_or_strip {
            return Err(TargetError::invalid(
                "dif_insert_or_strip: no bdev here has protection information",
            ));
        }
        let empty = |v: &Option<Value>| {
            v.as_ref()
                .is_none_or(|v| v.is_null() || v == &json!("") || v == &json!([]))
        };
        if !empty(&self.masked_oncs) || !empty(&self.masked_fuses) {
            return Err(TargetError::invalid(
                "masked_oncs / masked_fuses are not supported",
            ));
        }
        if self.kas == 0 {
            return Err(TargetError::invalid(
                "kas must not be 0 (the Linux host refuses a controller without keep alive)",
            ));
        }
        Ok(())
    }

    /// MDTS: the largest transfer as a power of two of 4 KiB pages.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).ilog2() as u8
    }

    /// IOCCSZ: the I/O queue's command capsule size in 16-byte units (the SQE plus the
    /// in-capsule data).
    pub fn ioccsz(&self) -> u32 {
        4 + self.in_capsule_data_size / 16
    }

    /// The effective keep alive timeout for a Connect's KATO (ms; 0 = none).
    pub fn effective_kato(&self, kato_ms: u32) -> u32 {
        if kato_ms == 0 {
            0
        } else {
            kato_ms.max(self.min_kato)
        }
    }

    /// The object `nvmf_get_transports` lists and save_config writes (SPDK's order).
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": self.trtype,
            "max_queue_depth": self.max_queue_depth,
            "max_io_qpairs_per_ctrlr": self.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": self.in_capsule_data_size,
            "max_io_size": self.max_io_size,
            "max_aq_depth": self.max_aq_depth,
            "num_shared_buffers": self.num_shared_buffers,
            "iobuf_small_cache_size": self.iobuf_small_cache_size,
            "iobuf_large_cache_size": self.iobuf_large_cache_size,
            "dif_insert_or_strip": self.dif_insert_or_strip,
            "zcopy": self.zcopy,
            "c2h_success": self.c2h_success,
            "sock_priority": self.sock_priority,
            "abort_timeout_sec": self.abort_timeout_sec,
            "ack_timeout": self.ack_timeout,
            "data_wr_pool_size": self.data_wr_pool_size,
            "disable_command_passthru": self.disable_command_passthru,
            "kas": self.kas,
            "min_kato": self.min_kato,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: Value) -> Result<TransportOptions, String> {
        let mut o: TransportOptions = serde_json::from_value(v).map_err(|e| e.to_string())?;
        o.check().map_err(|e| e.to_string())?;
        Ok(o)
    }

    #[test]
    fn defaults_are_spdks() {
        let o = opts(json!({"trtype": "tcp"})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.trtype, "TCP");
        assert_eq!(o.max_queue_depth, 128);
        assert_eq!(o.max_io_qpairs_per_ctrlr, 127);
        assert_eq!(o.in_capsule_data_size, 4096);
        assert_eq!(o.max_io_size, 131072);
        assert_eq!(o.max_aq_depth, 128);
        assert!(o.c2h_success);
        assert_eq!(o.mdts(), 5);
        assert_eq!(o.ioccsz(), 260);
        assert_eq!(o.effective_kato(5000), 10_000);
        assert_eq!(o.effective_kato(0), 0);
    }

    #[test]
    fn written_options_load_back() {
        let o = opts(json!({"trtype": "TCP", "in_capsule_data_size": 8192, "max_io_size": 65536}))
            .unwrap_or_else(|e| panic!("{e}"));
        let again = opts(o.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.to_json(), o.to_json());
        assert_eq!(again.in_capsule_data_size, 8192);
        let dumped = o.to_json();
        let keys: Vec<&String> = dumped
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.first().map(|k| k.as_str()), Some("trtype"));
        assert_eq!(keys.last().map(|k| k.as_str()), Some("min_kato"));
    }

    #[test]
    fn bad_options_are_refused_with_the_field_named() {
        for (v, field) in [
            (json!({"trtype": "RDMA"}), "RDMA"),
            (
                json!({"trtype": "TCP", "max_queue_depth": 1}),
                "max_queue_depth",
            ),
            (json!({"trtype": "TCP", "max_aq_depth": 8}), "max_aq_depth"),
            (json!({"trtype": "TCP", "max_io_size": 5000}), "max_io_size"),
            (
                json!({"trtype": "TCP", "in_capsule_data_size": 100}),
                "in_capsule_data_size",
            ),
            (
                json!({"trtype": "TCP", "sock_priority": 17}),
                "sock_priority",
            ),
            (json!({"trtype": "TCP", "bogus": 1}), "bogus"),
        ] {
            let e = opts(v).err().unwrap_or_default();
            assert!(e.contains(field), "{e}");
        }
        let o = opts(json!({"trtype": "TCP", "in_capsule_data_size": 16384, "max_io_size": 8192}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.in_capsule_data_size, 8192, "clamped to max_io_size");
    }
}
