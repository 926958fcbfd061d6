//! Get Features / Set Features (admin opcodes 0Ah / 09h): feature identifiers, the command's
//! fields and the values of the features a fabrics controller answers, plus the Asynchronous
//! Event Request completion (NVMe Base 2.0 "Feature Specific Information", "Asynchronous Event
//! Request command").
//!
//! ```text
//! cdw10  7:0 FID   Get: 10:8 SEL   Set: 31 SV (save)
//! cdw11  the feature's value (Set) or a feature specific parameter (Get)
//! cdw14  6:0 UUID index
//! result CQE dw0
//! ```

use super::command::{Sqe, admin};
use super::le::{self, Result};

/// Feature identifiers (FID).
pub mod fid {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// LBA Range Type.
    pub const LBA_RANGE_TYPE: u8 = 0x03;
    /// Temperature Threshold.
    pub const TEMP_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    /// Autonomous Power State Transition.
    pub const AUTONOMOUS_POWER_STATE: u8 = 0x0C;
    /// Host Memory Buffer.
    pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
    /// Timestamp.
    pub const TIMESTAMP: u8 = 0x0E;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    /// Host Controlled Thermal Management.
    pub const HOST_THERMAL_MGMT: u8 = 0x10;
    /// Non-Operational Power State Config.
    pub const NON_OP_POWER_STATE: u8 = 0x11;
    /// Read Recovery Level Config.
    pub const READ_RECOVERY_LEVEL: u8 = 0x12;
    /// Host Behavior Support.
    pub const HOST_BEHAVIOR: u8 = 0x16;
    /// Sanitize Config.
    pub const SANITIZE_CONFIG: u8 = 0x17;
    /// Endurance Group Event Configuration.
    pub const ENDURANCE_GROUP_EVENT: u8 = 0x18;
    /// I/O Command Set Profile.
    pub const IO_COMMAND_SET_PROFILE: u8 = 0x19;
    /// Software Progress Marker.
    pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
    /// Host Identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
    /// Reservation Notification Mask.
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    /// Reservation Persistence.
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
    /// Namespace Write Protection Config.
    pub const NS_WRITE_PROTECTION: u8 = 0x84;
}

/// Get Features SEL values.
pub mod sel {
    /// The current value.
    pub const CURRENT: u8 = 0;
    /// The default value.
    pub const DEFAULT: u8 = 1;
    /// The saved value.
    pub const SAVED: u8 = 2;
    /// The feature's capabilities (dw0 is [`super::capabilities`] bits).
    pub const SUPPORTED: u8 = 3;
}

/// Get Features with SEL = supported capabilities: dw0 bits.
pub mod capabilities {
    /// The feature is saveable.
    pub const SAVEABLE: u32 = 1 << 0;
    /// The feature is namespace specific.
    pub const NS_SPECIFIC: u32 = 1 << 1;
    /// The feature is changeable.
    pub const CHANGEABLE: u32 = 1 << 2;
}

/// A Get Features or Set Features command's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureCommand {
    /// Feature (see [`fid`]).
    pub fid: u8,
    /// Get Features: which value (see [`sel`]); 0 for Set Features.
    pub sel: u8,
    /// Set Features: save the value across resets (we have nowhere to save it).
    pub save: bool,
    /// The feature's value (Set) or parameter (Get).
    pub cdw11: u32,
    /// Feature specific (e.g. Host Behavior Support has none; LBA Range Type uses it).
    pub cdw12: u32,
    /// UUID index.
    pub uuid_index: u8,
}

impl FeatureCommand {
    /// The fields of a Get or Set Features `sqe` (SEL is read only for Get, SV only for Set).
    pub const fn from_sqe(sqe: &Sqe) -> FeatureCommand {
        let set = sqe.opcode == admin::SET_FEATURES;
        FeatureCommand {
            fid: sqe.cdw10 as u8,
            sel: if set { 0 } else { ((sqe.cdw10 >> 8) & 7) as u8 },
            save: set && sqe.cdw10 & (1 << 31) != 0,
            cdw11: sqe.cdw11,
            cdw12: sqe.cdw12,
            uuid_index: (sqe.cdw14 & 0x7F) as u8,
        }
    }

    /// A Get Features SQE for namespace `nsid`.
    pub fn to_get_sqe(&self, cid: u16, nsid: u32) -> Sqe {
        let mut sqe = Sqe::new(admin::GET_FEATURES, cid, nsid);
        sqe.cdw10 = self.fid as u32 | ((self.sel & 7) as u32) << 8;
        self.fill(&mut sqe);
        sqe
    }

    /// A Set Features SQE for namespace `nsid`.
    pub fn to_set_sqe(&self, cid: u16, nsid: u32) -> Sqe {
        let mut sqe = Sqe::new(admin::SET_FEATURES, cid, nsid);
        sqe.cdw10 = self.fid as u32 | (self.save as u32) << 31;
        self.fill(&mut sqe);
        sqe
    }

    fn fill(&self, sqe: &mut Sqe) {
        sqe.cdw11 = self.cdw11;
        sqe.cdw12 = self.cdw12;
        sqe.cdw14 = (self.uuid_index & 0x7F) as u32;
    }
}

/// Number of Queues (FID 07h): I/O submission and completion queue counts, 0's based, in
/// cdw11 (requested) and in dw0 (allocated).
///
/// ```text
/// 15:0 NSQR / NSQA   31:16 NCQR / NCQA
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// Submission queues, 0's based.
    pub nsq: u16,
    /// Completion queues, 0's based.
    pub ncq: u16,
}

impl NumberOfQueues {
    /// `sq` submission and `cq` completion queues (counts, 1..=65535; 0 is taken as 1).
    pub const fn from_counts(sq: u16, cq: u16) -> NumberOfQueues {
        NumberOfQueues {
            nsq: sq.saturating_sub(1),
            ncq: cq.saturating_sub(1),
        }
    }

    /// The dword.
    pub const fn to_u32(&self) -> u32 {
        self.nsq as u32 | (self.ncq as u32) << 16
    }

    /// The counts in a dword.
    pub const fn from_u32(v: u32) -> NumberOfQueues {
        NumberOfQueues {
            nsq: v as u16,
            ncq: (v >> 16) as u16,
        }
    }

    /// The number of submission queues.
    pub const fn sq_count(&self) -> u32 {
        self.nsq as u32 + 1
    }

    /// The number of completion queues.
    pub const fn cq_count(&self) -> u32 {
        self.ncq as u32 + 1
    }

    /// False for a request the spec calls invalid (either count FFFFh, i.e. 65536 queues).
    pub const fn is_valid_request(&self) -> bool {
        self.nsq != 0xFFFF && self.ncq != 0xFFFF
    }
}

/// Asynchronous Event Configuration (FID 0Bh) cdw11 bits: which events the host wants.
pub mod aec {
    /// SMART / health critical warnings (bits 7:0, one per warning).
    pub const CRITICAL_WARNINGS: u32 = 0xFF;
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// Telemetry Log Notices.
    pub const TELEMETRY: u32 = 1 << 10;
    /// ANA Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery Log Page Change Notices.
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// Volatile Write Cache (FID 06h) cdw11 / dw0 bit: the cache is enabled.
pub const VWC_ENABLE: u32 = 1 << 0;

/// Write Atomicity Normal (FID 0Ah) bit: disable normal (only AWUPF applies).
pub const WRITE_ATOMICITY_DN: u32 = 1 << 0;

/// Temperature Threshold (FID 04h) cdw11 / dw0.
///
/// ```text
/// 15:0 TMPTH (kelvin)  19:16 TMPSEL (0 composite, 1..8 sensors, 15 all)  21:20 THSEL (0 over, 1 under)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TempThreshold {
    /// Threshold in kelvin.
    pub tmpth: u16,
    /// Which sensor (4 bits).
    pub tmpsel: u8,
    /// 0 over-temperature, 1 under-temperature threshold (2 bits).
    pub thsel: u8,
}

impl TempThreshold {
    /// The dword.
    pub const fn to_u32(&self) -> u32 {
        self.tmpth as u32 | ((self.tmpsel & 0xF) as u32) << 16 | ((self.thsel & 3) as u32) << 20
    }

    /// The fields of a dword.
    pub const fn from_u32(v: u32) -> TempThreshold {
        TempThreshold {
            tmpth: v as u16,
            tmpsel: ((v >> 16) & 0xF) as u8,
            thsel: ((v >> 20) & 3) as u8,
        }
    }
}

/// Error Recovery (FID 05h) cdw11 / dw0: TLER (100 ms units) in bits 15:0, DULBE bit 16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorRecovery {
    /// Time limited error recovery (100 ms units; 0: none).
    pub tler: u16,
    /// Deallocated or unwritten logical block error enable.
    pub dulbe: bool,
}

impl ErrorRecovery {
    /// The dword.
    pub const fn to_u32(&self) -> u32 {
        self.tler as u32 | (self.dulbe as u32) << 16
    }

    /// The fields of a dword.
    pub const fn from_u32(v: u32) -> ErrorRecovery {
        ErrorRecovery {
            tler: v as u16,
            dulbe: v & (1 << 16) != 0,
        }
    }
}

/// Size of the Host Behavior Support data (FID 16h).
pub const HOST_BEHAVIOR_LEN: usize = 512;

/// Host Behavior Support data (FID 16h, 512 bytes moved with the command).
///
/// ```text
/// 0 ACRE (advanced command retry enable: CRD in statuses is honoured)  1 ETDAS  2 LBAFEE
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBehavior {
    /// Advanced Command Retry Enable (1: the host honours CRD).
    pub acre: u8,
    /// Extended Telemetry Data Area 4 Supported.
    pub etdas: u8,
    /// LBA Format Extension Enable.
    pub lbafee: u8,
}

impl HostBehavior {
    /// The data in the first 512 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<HostBehavior> {
        le::need(b, HOST_BEHAVIOR_LEN)?;
        Ok(HostBehavior {
            acre: le::get_u8(b, 0)?,
            etdas: le::get_u8(b, 1)?,
            lbafee: le::get_u8(b, 2)?,
        })
    }

    /// Writes the 512 bytes and returns 512.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, HOST_BEHAVIOR_LEN)?;
        le::zero(b, 0, HOST_BEHAVIOR_LEN)?;
        le::put_bytes(b, 0, &[self.acre, self.etdas, self.lbafee])?;
        Ok(HOST_BEHAVIOR_LEN)
    }
}

/// Size of the Timestamp data (FID 0Eh).
pub const TIMESTAMP_LEN: usize = 8;

/// Timestamp data (FID 0Eh, 8 bytes): milliseconds since the Unix epoch in bits 47:0 of bytes
/// 0..6, attributes in byte 6 (bit 0 synch, bits 3:1 origin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timestamp {
    /// Milliseconds since 1970-01-01 UTC (48 bits).
    pub ms: u64,
    /// Attributes.
    pub attributes: u8,
}

impl Timestamp {
    /// The data in the first 8 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Timestamp> {
        let v = le::get_u64(b, 0)?;
        Ok(Timestamp {
            ms: v & 0xFFFF_FFFF_FFFF,
            attributes: (v >> 48) as u8,
        })
    }

    /// Writes the 8 bytes (ms cut to 48 bits) and returns 8.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        let v = (self.ms & 0xFFFF_FFFF_FFFF) | (self.attributes as u64) << 48;
        le::put_u64(b, 0, v)?;
        Ok(TIMESTAMP_LEN)
    }
}

/// Asynchronous event types (AER completion dw0 bits 2:0).
pub mod event_type {
    /// Error status.
    pub const ERROR: u8 = 0;
    /// SMART / health status.
    pub const SMART: u8 = 1;
    /// Notice.
    pub const NOTICE: u8 = 2;
    /// Immediate.
    pub const IMMEDIATE: u8 = 3;
    /// I/O command set specific status.
    pub const IO_COMMAND_SET: u8 = 6;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Asynchronous event information for [`event_type::NOTICE`].
pub mod notice {
    /// Namespace Attribute Changed (log 04h lists the namespaces).
    pub const NS_ATTR_CHANGED: u8 = 0x00;
    /// Firmware Activation Starting.
    pub const FW_ACTIVATION_STARTING: u8 = 0x01;
    /// Telemetry Log Changed.
    pub const TELEMETRY_LOG_CHANGED: u8 = 0x02;
    /// Asymmetric Namespace Access Change (log 0Ch).
    pub const ANA_CHANGE: u8 = 0x03;
    /// Discovery Log Page Change (log 70h).
    pub const DISCOVERY_LOG_CHANGE: u8 = 0xF0;
}

/// An asynchronous event, as an AER completion's dw0 carries it.
///
/// ```text
/// 2:0 type   15:8 information   23:16 log page to read (and clear) for details
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type (see [`event_type`]).
    pub event_type: u8,
    /// Event information (e.g. [`notice`]).
    pub info: u8,
    /// The log page that tells more.
    pub log_page: u8,
}

impl AsyncEvent {
    /// Namespace attribute changed: read the Changed Namespace List (log 04h).
    pub const NS_ATTR_CHANGED: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::NS_ATTR_CHANGED,
        log_page: 0x04,
    };

    /// ANA state changed: read the ANA log (0Ch).
    pub const ANA_CHANGE: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::ANA_CHANGE,
        log_page: 0x0C,
    };

    /// The discovery log changed: read the Discovery log (70h).
    pub const DISCOVERY_LOG_CHANGE: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::DISCOVERY_LOG_CHANGE,
        log_page: 0x70,
    };

    /// The completion dw0.
    pub const fn to_dw0(&self) -> u32 {
        (self.event_type & 7) as u32 | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }

    /// The event in a completion dw0.
    pub const fn from_dw0(dw0: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: (dw0 & 7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn number_of_queues_as_linux_sends_it() {
        // Linux asks for n queues with cdw11 = (n - 1) | (n - 1) << 16.
        let mut b = [0u8; 64];
        b[0] = 0x09; // Set Features
        b[40] = 0x07; // FID
        b[44] = 0x03; // NSQR 3
        b[46] = 0x03; // NCQR 3
        let sqe = Sqe::decode(&b).unwrap();
        let f = FeatureCommand::from_sqe(&sqe);
        assert_eq!(f.fid, fid::NUMBER_OF_QUEUES);
        assert!(!f.save);
        let q = NumberOfQueues::from_u32(f.cdw11);
        assert_eq!((q.sq_count(), q.cq_count()), (4, 4));
        assert!(q.is_valid_request());
        assert_eq!(NumberOfQueues::from_counts(4, 4).to_u32(), 0x0003_0003);
        assert_eq!(NumberOfQueues::from_counts(0, 1).to_u32(), 0);
        assert!(!NumberOfQueues::from_u32(0xFFFF).is_valid_request());
        let mut s = f.to_set_sqe(0, 0);
        s.psdt = 0;
        assert_eq!(s.to_bytes(), b);
    }

    #[test]
    fn get_and_set_fields() {
        let mut sqe = Sqe::new(admin::GET_FEATURES, 1, 0);
        sqe.cdw10 = 0x8000_0304; // SEL 3, FID 04h; bit 31 means nothing for Get
        sqe.cdw11 = 0x0010_0000 | 343;
        let f = FeatureCommand::from_sqe(&sqe);
        assert_eq!(
            (f.fid, f.sel, f.save),
            (fid::TEMP_THRESHOLD, sel::SUPPORTED, false)
        );
        assert_eq!(
            TempThreshold::from_u32(f.cdw11),
            TempThreshold {
                tmpth: 343,
                tmpsel: 0,
                thsel: 1
            }
        );
        let g = f.to_get_sqe(1, 0);
        assert_eq!(g.cdw10, 0x0000_0304);
        let mut set = Sqe::new(admin::SET_FEATURES, 2, 0);
        set.cdw10 = 0x8000_0706; // SV, SEL bits ignored for Set, FID 06h
        set.cdw11 = VWC_ENABLE;
        let f = FeatureCommand::from_sqe(&set);
        assert_eq!((f.fid, f.sel, f.save), (fid::VOLATILE_WRITE_CACHE, 0, true));
        assert_eq!(f.to_set_sqe(2, 0).cdw10, 0x8000_0006);
        let t = TempThreshold {
            tmpth: 0xFFFF,
            tmpsel: 0xF,
            thsel: 3,
        };
        assert_eq!(t.to_u32(), 0x003F_FFFF);
        let e = ErrorRecovery {
            tler: 5,
            dulbe: true,
        };
        assert_eq!(e.to_u32(), 0x0001_0005);
        assert_eq!(ErrorRecovery::from_u32(0x0001_0005), e);
    }

    #[test]
    fn aer_dw0_golden() {
        // Notice (2), namespace attribute changed (0), log 04h.
        assert_eq!(AsyncEvent::NS_ATTR_CHANGED.to_dw0(), 0x0004_0002);
        // Notice, discovery log change (F0h), log 70h.
        assert_eq!(AsyncEvent::DISCOVERY_LOG_CHANGE.to_dw0(), 0x0070_F002);
        assert_eq!(AsyncEvent::ANA_CHANGE.to_dw0(), 0x000C_0302);
        assert_eq!(
            AsyncEvent::from_dw0(0x0004_0002),
            AsyncEvent::NS_ATTR_CHANGED
        );
        assert_eq!(
            aec::NS_ATTR | aec::FW_ACTIVATION | aec::ANA_CHANGE | aec::DISCOVERY_CHANGE,
            0x8000_0B00
        );
    }

    #[test]
    fn host_behavior_and_timestamp() {
        let mut b = [0xFFu8; HOST_BEHAVIOR_LEN];
        let h = HostBehavior {
            acre: 1,
            ..HostBehavior::default()
        };
        assert_eq!(h.encode(&mut b), Ok(HOST_BEHAVIOR_LEN));
        assert_eq!(b[0], 1);
        assert!(b[1..].iter().all(|&x| x == 0));
        assert_eq!(HostBehavior::decode(&b), Ok(h));
        assert!(HostBehavior::decode(&b[..511]).is_err());
        assert!(h.encode(&mut b[..100]).is_err());

        let g = [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x03, 0x00];
        let t = Timestamp::decode(&g).unwrap();
        assert_eq!(
            t,
            Timestamp {
                ms: 0x3344_5566_7788,
                attributes: 3
            }
        );
        let mut out = [0u8; 8];
        assert_eq!(t.encode(&mut out), Ok(8));
        assert_eq!(out, g);
        assert!(Timestamp::decode(&g[..7]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_dwords(v in any::<u32>(), b in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(NumberOfQueues::from_u32(v).to_u32(), v);
            let e = AsyncEvent::from_dw0(v);
            prop_assert_eq!(AsyncEvent::from_dw0(e.to_dw0()), e);
            let t = TempThreshold::from_u32(v);
            prop_assert_eq!(TempThreshold::from_u32(t.to_u32()), t);
            let r = ErrorRecovery::from_u32(v);
            prop_assert_eq!(ErrorRecovery::from_u32(r.to_u32()), r);
            match HostBehavior::decode(&b) {
                Ok(h) => {
                    let mut out = [0u8; HOST_BEHAVIOR_LEN];
                    h.encode(&mut out).unwrap();
                    prop_assert_eq!(HostBehavior::decode(&out), Ok(h));
                }
                Err(_) => prop_assert!(b.len() < HOST_BEHAVIOR_LEN),
            }
            if let Ok(t) = Timestamp::decode(&b) {
                let mut out = [0u8; 8];
                t.encode(&mut out).unwrap();
                prop_assert_eq!(Timestamp::decode(&out), Ok(t));
            }
        }

        #[test]
        fn any_feature_sqe(b in any::<[u8; 64]>()) {
            let sqe = Sqe::decode(&b).unwrap();
            let f = FeatureCommand::from_sqe(&sqe);
            prop_assert_eq!(FeatureCommand::from_sqe(&f.to_get_sqe(0, 0)).fid, f.fid);
            let s = FeatureCommand::from_sqe(&f.to_set_sqe(0, 0));
            prop_assert_eq!((s.fid, s.cdw11, s.cdw12), (f.fid, f.cdw11, f.cdw12));
        }
    }
}
