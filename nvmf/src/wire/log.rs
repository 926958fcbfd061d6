//! Get Log Page (admin opcode 02h): the command's fields and the log pages a fabrics
//! controller returns (NVMe Base 2.0 "Get Log Page command" and "Log Page Identifiers";
//! NVMe-oF 1.1 "Discovery Log Page").
//!
//! ```text
//! cdw10  7:0 LID  14:8 LSP  15 RAE  31:16 NUMDL     cdw11  15:0 NUMDU  31:16 LSI
//! cdw12  LPOL     cdw13  LPOU     cdw14  6:0 UUID index  23 OT  31:24 CSI
//! dwords = (NUMDU << 16 | NUMDL) + 1; byte offset = LPOU << 32 | LPOL
//! ```
//!
//! A target builds the whole page into a buffer with the builders here and hands back the
//! requested window with [`copy_window`].

use super::command::{Sgl, Sqe, admin};
use super::fabrics::{Nqn, Text};
use super::identify::NsList;
use super::le::{self, Pad, Result, WireError};
use super::status::Status;

/// Log page identifiers (LID).
pub mod lid {
    /// Supported Log Pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const HEALTH: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: u8 = 0x06;
    /// Telemetry Host-Initiated.
    pub const TELEMETRY_HOST: u8 = 0x07;
    /// Telemetry Controller-Initiated.
    pub const TELEMETRY_CTRL: u8 = 0x08;
    /// Endurance Group Information.
    pub const ENDURANCE_GROUP: u8 = 0x09;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0C;
    /// Persistent Event Log.
    pub const PERSISTENT_EVENT: u8 = 0x0D;
    /// Feature Identifiers Supported and Effects.
    pub const FID_EFFECTS: u8 = 0x12;
    /// NVMe-MI Commands Supported and Effects.
    pub const MI_EFFECTS: u8 = 0x13;
    /// Discovery (discovery controllers).
    pub const DISCOVERY: u8 = 0x70;
    /// Reservation Notification.
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
    /// Sanitize Status.
    pub const SANITIZE: u8 = 0x81;
}

/// A Get Log Page command's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetLogPage {
    /// Which log (see [`lid`]).
    pub lid: u8,
    /// Log specific parameter (7 bits).
    pub lsp: u8,
    /// Retain Asynchronous Event: reading does not clear the event that pointed here.
    pub rae: bool,
    /// Dwords to return (1..=2^32; NUMD plus one).
    pub numd: u64,
    /// Log specific identifier.
    pub lsi: u16,
    /// Byte offset into the log (dword aligned unless OT is set).
    pub lpo: u64,
    /// UUID index.
    pub uuid_index: u8,
    /// Offset type: 1 means LPO counts entries (index), not bytes.
    pub ot: bool,
    /// Command set identifier.
    pub csi: u8,
}

impl GetLogPage {
    /// The fields of `sqe` (its opcode is not checked).
    pub const fn from_sqe(sqe: &Sqe) -> GetLogPage {
        let numdl = (sqe.cdw10 >> 16) as u64;
        let numdu = (sqe.cdw11 & 0xFFFF) as u64;
        GetLogPage {
            lid: sqe.cdw10 as u8,
            lsp: ((sqe.cdw10 >> 8) & 0x7F) as u8,
            rae: sqe.cdw10 & (1 << 15) != 0,
            numd: (numdu << 16 | numdl) + 1,
            lsi: (sqe.cdw11 >> 16) as u16,
            lpo: sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32,
            uuid_index: (sqe.cdw14 & 0x7F) as u8,
            ot: sqe.cdw14 & (1 << 23) != 0,
            csi: (sqe.cdw14 >> 24) as u8,
        }
    }

    /// A Get Log Page SQE for namespace `nsid` (NUMD is taken modulo 2^32, and 0 as 1).
    pub fn to_sqe(&self, cid: u16, nsid: u32, dptr: Sgl) -> Sqe {
        let n = self.numd.saturating_sub(1) as u32;
        let mut sqe = Sqe::new(admin::GET_LOG_PAGE, cid, nsid);
        sqe.dptr = dptr;
        sqe.cdw10 = self.lid as u32
            | ((self.lsp & 0x7F) as u32) << 8
            | (self.rae as u32) << 15
            | (n & 0xFFFF) << 16;
        sqe.cdw11 = n >> 16 | (self.lsi as u32) << 16;
        sqe.cdw12 = self.lpo as u32;
        sqe.cdw13 = (self.lpo >> 32) as u32;
        sqe.cdw14 =
            (self.uuid_index & 0x7F) as u32 | (self.ot as u32) << 23 | (self.csi as u32) << 24;
        sqe
    }

    /// A request for `len` bytes (rounded up to dwords) of log `lid` from byte `offset`.
    pub const fn bytes(lid: u8, offset: u64, len: u32) -> GetLogPage {
        GetLogPage {
            lid,
            lsp: 0,
            rae: false,
            numd: (len as u64).div_ceil(4),
            lsi: 0,
            lpo: offset,
            uuid_index: 0,
            ot: false,
            csi: 0,
        }
    }

    /// The number of bytes asked for.
    pub const fn len(&self) -> u64 {
        self.numd * 4
    }

    /// True when no bytes are asked for (never, for a decoded command: NUMD is 0's based).
    pub const fn is_empty(&self) -> bool {
        self.numd == 0
    }

    /// The status a controller answers when the offset is not dword aligned (byte offsets
    /// must be), or None when it is fine.
    pub const fn offset_error(&self) -> Option<Status> {
        if !self.ot && self.lpo & 3 != 0 {
            Some(Status::INVALID_FIELD)
        } else {
            None
        }
    }
}

/// Copies the window `[offset, offset + out.len())` of a built `page` into `out` and zeroes
/// whatever lies past the page's end (as SPDK and Linux's target do). Returns the bytes that
/// came from the page.
pub fn copy_window(page: &[u8], offset: u64, out: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(page.len());
    let src = page.get(start..).unwrap_or(&[]);
    let n = src.len().min(out.len());
    let (head, tail) = out.split_at_mut(n);
    if let Some(s) = src.get(..n) {
        head.copy_from_slice(s);
    }
    tail.fill(0);
    n
}

/// Size of the Supported Log Pages log.
pub const SUPPORTED_LEN: usize = 1024;
/// LIDS entry bit: the log page is supported.
pub const LSUPP: u32 = 1 << 0;
/// LIDS entry bit: index offset (OT = 1) supported.
pub const IOS: u32 = 1 << 1;

/// Writes the Supported Log Pages log (1024 bytes: one dword per LID) with [`LSUPP`] for each
/// of `lids`; returns 1024.
pub fn encode_supported(lids: &[u8], b: &mut [u8]) -> Result<usize> {
    le::need(b, SUPPORTED_LEN)?;
    le::zero(b, 0, SUPPORTED_LEN)?;
    for &l in lids {
        le::put_u32(b, 4 * l as usize, LSUPP)?;
    }
    Ok(SUPPORTED_LEN)
}

/// The LIDS dword for `lid` in a Supported Log Pages log.
pub fn supported_entry(b: &[u8], lid: u8) -> Result<u32> {
    le::need(b, SUPPORTED_LEN)?;
    le::get_u32(b, 4 * lid as usize)
}

/// Size of one Error Information log entry.
pub const ERROR_ENTRY_LEN: usize = 64;

/// One Error Information log entry (64 bytes; an empty log is all zeros).
///
/// ```text
/// 0 error count u64  8 sqid  10 cid  12 status (bit 0 phase)  14 parameter error location
/// 16 lba u64  24 nsid  28 vendor info page  29 trtype  32 command specific u64
/// 40 transport type specific u16
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Unique, increasing error count (0: the entry is empty).
    pub error_count: u64,
    /// Submission queue of the failed command.
    pub sqid: u16,
    /// Command identifier of the failed command.
    pub cid: u16,
    /// Its status.
    pub status: Status,
    /// Byte (bits 7:0) and bit (10:8) of the field at fault (FFFFh: not applicable).
    pub location: u16,
    /// First LBA that hit the error.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor specific information log page.
    pub vs: u8,
    /// Transport type (see [`trtype`]).
    pub trtype: u8,
    /// Command specific information.
    pub command_specific: u64,
    /// Transport type specific information.
    pub trtype_specific: u16,
}

impl ErrorEntry {
    /// Writes the 64-byte entry at the start of `b`; returns 64.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, ERROR_ENTRY_LEN)?;
        le::zero(b, 0, ERROR_ENTRY_LEN)?;
        le::put_u64(b, 0, self.error_count)?;
        le::put_u16(b, 8, self.sqid)?;
        le::put_u16(b, 10, self.cid)?;
        le::put_u16(b, 12, self.status.to_u16())?;
        le::put_u16(b, 14, self.location)?;
        le::put_u64(b, 16, self.lba)?;
        le::put_u32(b, 24, self.nsid)?;
        le::put_u8(b, 28, self.vs)?;
        le::put_u8(b, 29, self.trtype)?;
        le::put_u64(b, 32, self.command_specific)?;
        le::put_u16(b, 40, self.trtype_specific)?;
        Ok(ERROR_ENTRY_LEN)
    }

    /// The entry in the first 64 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<ErrorEntry> {
        le::need(b, ERROR_ENTRY_LEN)?;
        Ok(ErrorEntry {
            error_count: le::get_u64(b, 0)?,
            sqid: le::get_u16(b, 8)?,
            cid: le::get_u16(b, 10)?,
            status: Status::from_u16(le::get_u16(b, 12)?),
            location: le::get_u16(b, 14)?,
            lba: le::get_u64(b, 16)?,
            nsid: le::get_u32(b, 24)?,
            vs: le::get_u8(b, 28)?,
            trtype: le::get_u8(b, 29)?,
            command_specific: le::get_u64(b, 32)?,
            trtype_specific: le::get_u16(b, 40)?,
        })
    }
}

/// Size of the SMART / Health Information log.
pub const HEALTH_LEN: usize = 512;
/// Kelvin at 0 °C, rounded as the spec's temperatures are (whole kelvin).
pub const KELVIN_AT_0C: u16 = 273;

/// Critical warning bits of the health log.
pub mod critical_warning {
    /// Available spare below its threshold.
    pub const SPARE: u8 = 1 << 0;
    /// Temperature over or under a threshold.
    pub const TEMPERATURE: u8 = 1 << 1;
    /// Reliability degraded by media or internal errors.
    pub const RELIABILITY: u8 = 1 << 2;
    /// All media is read-only.
    pub const READ_ONLY: u8 = 1 << 3;
    /// The volatile memory backup has failed.
    pub const VOLATILE_BACKUP: u8 = 1 << 4;
    /// The persistent memory region is read-only.
    pub const PMR_READ_ONLY: u8 = 1 << 5;
}

/// SMART / Health Information log (512 bytes).
///
/// ```text
///   0 critical warning  1 composite temperature u16 (K)  3 available spare %  4 spare threshold %
///   5 percentage used  6 endurance group critical warning summary
///  32 data units read u128  48 data units written  64 host read commands  80 host write commands
///  96 controller busy time (min)  112 power cycles  128 power on hours  144 unsafe shutdowns
/// 160 media errors  176 error log entries  192 warning temp time u32  196 critical temp time u32
/// 200 temperature sensors 1..8 u16 (K; 0 = not present)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLog {
    /// Critical warnings (see [`critical_warning`]).
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub spare_threshold: u8,
    /// Estimated life used, percent (may exceed 100).
    pub percentage_used: u8,
    /// Endurance group critical warning summary.
    pub endurance_group_warning: u8,
    /// Data read, in thousands of 512-byte units rounded up (see [`HealthLog::data_units`]).
    pub data_units_read: u128,
    /// Data written, in thousands of 512-byte units rounded up.
    pub data_units_written: u128,
    /// Read commands completed.
    pub host_reads: u128,
    /// Write commands completed.
    pub host_writes: u128,
    /// Minutes the controller was busy with I/O.
    pub busy_time: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Unrecovered data integrity errors.
    pub media_errors: u128,
    /// Error information log entries over the controller's life.
    pub error_log_entries: u128,
    /// Minutes above the warning temperature.
    pub warning_temp_time: u32,
    /// Minutes above the critical temperature.
    pub critical_temp_time: u32,
    /// Temperature sensors 1..8 in kelvin (0: not present).
    pub temp_sensors: [u16; 8],
}

impl Default for HealthLog {
    /// A healthy device at 25 °C with all its spare left (threshold 10%), nothing counted.
    fn default() -> Self {
        HealthLog {
            critical_warning: 0,
            temperature: KELVIN_AT_0C + 25,
            available_spare: 100,
            spare_threshold: 10,
            percentage_used: 0,
            endurance_group_warning: 0,
            data_units_read: 0,
            data_units_written: 0,
            host_reads: 0,
            host_writes: 0,
            busy_time: 0,
            power_cycles: 0,
            power_on_hours: 0,
            unsafe_shutdowns: 0,
            media_errors: 0,
            error_log_entries: 0,
            warning_temp_time: 0,
            critical_temp_time: 0,
            temp_sensors: [0; 8],
        }
    }
}

impl HealthLog {
    /// Data units for `bytes` moved: thousands of 512-byte units, rounded up (1 byte to
    /// 512,000 bytes is 1).
    pub const fn data_units(bytes: u128) -> u128 {
        bytes.div_ceil(512 * 1000)
    }

    /// Writes the 512-byte log; returns 512.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, HEALTH_LEN)?;
        le::zero(b, 0, HEALTH_LEN)?;
        le::put_u8(b, 0, self.critical_warning)?;
        le::put_u16(b, 1, self.temperature)?;
        le::put_bytes(
            b,
            3,
            &[
                self.available_spare,
                self.spare_threshold,
                self.percentage_used,
                self.endurance_group_warning,
            ],
        )?;
        let counters = [
            self.data_units_read,
            self.data_units_written,
            self.host_reads,
            self.host_writes,
            self.busy_time,
            self.power_cycles,
            self.power_on_hours,
            self.unsafe_shutdowns,
            self.media_errors,
            self.error_log_entries,
        ];
        for (i, c) in counters.iter().enumerate() {
            le::put_bytes(b, 32 + 16 * i, &c.to_le_bytes())?;
        }
        le::put_u32(b, 192, self.warning_temp_time)?;
        le::put_u32(b, 196, self.critical_temp_time)?;
        for (i, t) in self.temp_sensors.iter().enumerate() {
            le::put_u16(b, 200 + 2 * i, *t)?;
        }
        Ok(HEALTH_LEN)
    }

    /// The log in the first 512 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<HealthLog> {
        le::need(b, HEALTH_LEN)?;
        let c =
            |i: usize| -> Result<u128> { Ok(u128::from_le_bytes(le::get_array(b, 32 + 16 * i)?)) };
        let mut temp_sensors = [0u16; 8];
        for (i, t) in temp_sensors.iter_mut().enumerate() {
            *t = le::get_u16(b, 200 + 2 * i)?;
        }
        Ok(HealthLog {
            critical_warning: le::get_u8(b, 0)?,
            temperature: le::get_u16(b, 1)?,
            available_spare: le::get_u8(b, 3)?,
            spare_threshold: le::get_u8(b, 4)?,
            percentage_used: le::get_u8(b, 5)?,
            endurance_group_warning: le::get_u8(b, 6)?,
            data_units_read: c(0)?,
            data_units_written: c(1)?,
            host_reads: c(2)?,
            host_writes: c(3)?,
            busy_time: c(4)?,
            power_cycles: c(5)?,
            power_on_hours: c(6)?,
            unsafe_shutdowns: c(7)?,
            media_errors: c(8)?,
            error_log_entries: c(9)?,
            warning_temp_time: le::get_u32(b, 192)?,
            critical_temp_time: le::get_u32(b, 196)?,
            temp_sensors,
        })
    }
}

/// Size of the Firmware Slot Information log.
pub const FW_SLOT_LEN: usize = 512;

/// Firmware Slot Information log (512 bytes): AFI at 0 (active slot bits 2:0, slot at next
/// reset bits 6:4), revisions of slots 1..7 at 8 + 8 × (slot − 1), space padded ASCII.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareSlotLog {
    /// Active firmware info.
    pub afi: u8,
    /// Firmware revision in each slot (empty: no firmware there).
    pub frs: [Text<8>; 7],
}

impl FirmwareSlotLog {
    /// Writes the 512-byte log; returns 512.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, FW_SLOT_LEN)?;
        le::zero(b, 0, FW_SLOT_LEN)?;
        le::put_u8(b, 0, self.afi)?;
        for (i, f) in self.frs.iter().enumerate() {
            // An empty slot stays zero rather than eight spaces.
            if !f.is_empty() {
                f.encode(b, 8 + 8 * i, Pad::Space, "frs")?;
            }
        }
        Ok(FW_SLOT_LEN)
    }

    /// The log in the first 512 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<FirmwareSlotLog> {
        le::need(b, FW_SLOT_LEN)?;
        let mut frs = [Text::<8>::empty(); 7];
        for (i, f) in frs.iter_mut().enumerate() {
            *f = Text::decode(b, 8 + 8 * i, "frs")?;
        }
        Ok(FirmwareSlotLog {
            afi: le::get_u8(b, 0)?,
            frs,
        })
    }
}

/// Size of the Changed Namespace List log.
pub const CHANGED_NS_LEN: usize = 4096;
/// Entry 0 of a Changed Namespace List when more than 1024 namespaces changed.
pub const CHANGED_NS_OVERFLOW: u32 = 0xFFFF_FFFF;

/// Writes the Changed Namespace List (1024 dwords, zero after the last): the NSIDs in `ids`,
/// or [`CHANGED_NS_OVERFLOW`] alone when there are more than 1024. Returns 4096.
pub fn encode_changed_ns<I: IntoIterator<Item = u32>>(ids: I, b: &mut [u8]) -> Result<usize> {
    le::need(b, CHANGED_NS_LEN)?;
    le::zero(b, 0, CHANGED_NS_LEN)?;
    let mut it = ids.into_iter();
    for (i, id) in it.by_ref().take(CHANGED_NS_LEN / 4).enumerate() {
        le::put_u32(b, 4 * i, id)?;
    }
    if it.next().is_some() {
        le::zero(b, 0, CHANGED_NS_LEN)?;
        le::put_u32(b, 0, CHANGED_NS_OVERFLOW)?;
    }
    Ok(CHANGED_NS_LEN)
}

/// A decoded Changed Namespace List.
#[derive(Clone, Debug)]
pub enum ChangedNs<'a> {
    /// The namespaces that changed (empty when none did).
    List(NsList<'a>),
    /// More than 1024 changed: rescan them all.
    Overflow,
}

impl<'a> ChangedNs<'a> {
    /// The list in the first 4096 bytes of `b`.
    pub fn decode(b: &'a [u8]) -> Result<ChangedNs<'a>> {
        le::need(b, CHANGED_NS_LEN)?;
        if le::get_u32(b, 0)? == CHANGED_NS_OVERFLOW {
            Ok(ChangedNs::Overflow)
        } else {
            Ok(ChangedNs::List(NsList::decode(b)?))
        }
    }
}

/// Size of the Commands Supported and Effects log.
pub const CMD_EFFECTS_LEN: usize = 4096;

/// Commands Supported and Effects entry bits.
pub mod effects {
    /// Command supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical block content may change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace capability may change.
    pub const NCC: u32 = 1 << 2;
    /// Namespace inventory may change.
    pub const NIC: u32 = 1 << 3;
    /// Controller capability may change.
    pub const CCC: u32 = 1 << 4;
    /// Submit only with no other command outstanding to the namespace (CSE 001b).
    pub const CSE_SINGLE_NS: u32 = 1 << 16;
    /// Submit only with no other command outstanding at all (CSE 010b).
    pub const CSE_SINGLE: u32 = 2 << 16;
    /// UUID selection supported.
    pub const USS: u32 = 1 << 19;
}

/// Writes the Commands Supported and Effects log: `(opcode, effects)` for admin commands at
/// dword `opcode`, for I/O commands at dword 256 + `opcode`. Returns 4096.
pub fn encode_command_effects(
    admin: &[(u8, u32)],
    io: &[(u8, u32)],
    b: &mut [u8],
) -> Result<usize> {
    le::need(b, CMD_EFFECTS_LEN)?;
    le::zero(b, 0, CMD_EFFECTS_LEN)?;
    for &(opc, e) in admin {
        le::put_u32(b, 4 * opc as usize, e)?;
    }
    for &(opc, e) in io {
        le::put_u32(b, 1024 + 4 * opc as usize, e)?;
    }
    Ok(CMD_EFFECTS_LEN)
}

/// The effects entry of an admin (`io` false) or I/O command in a Commands Supported and
/// Effects log.
pub fn command_effect(b: &[u8], io: bool, opcode: u8) -> Result<u32> {
    le::need(b, CMD_EFFECTS_LEN)?;
    le::get_u32(b, if io { 1024 } else { 0 } + 4 * opcode as usize)
}

/// Transport types (TRTYPE).
pub mod trtype {
    /// RDMA.
    pub const RDMA: u8 = 1;
    /// Fibre Channel.
    pub const FC: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 3;
    /// Intra-host (loop).
    pub const LOOP: u8 = 0xFE;
}

/// Address families (ADRFAM).
pub mod adrfam {
    /// IPv4.
    pub const IPV4: u8 = 1;
    /// IPv6.
    pub const IPV6: u8 = 2;
    /// InfiniBand.
    pub const IB: u8 = 3;
    /// Fibre Channel.
    pub const FC: u8 = 4;
    /// Intra-host.
    pub const LOOP: u8 = 0xFE;
}

/// Subsystem types (SUBTYPE) of a discovery log entry.
pub mod subtype {
    /// A referral to another discovery service.
    pub const REFERRAL: u8 = 1;
    /// An NVM subsystem.
    pub const NVME: u8 = 2;
    /// The current discovery subsystem.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport requirements (TREQ) of a discovery log entry.
pub mod treq {
    /// Secure channel not specified (bits 1:0).
    pub const SECURE_CHANNEL_NOT_SPECIFIED: u8 = 0;
    /// Secure channel required.
    pub const SECURE_CHANNEL_REQUIRED: u8 = 1;
    /// Secure channel not required.
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 2;
    /// The controller supports disabling SQ flow control (bit 2).
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
}

/// Entry flags (EFLAGS) of a discovery log entry.
pub mod eflags {
    /// Duplicate returned information.
    pub const DUPRETINFO: u16 = 1 << 0;
    /// Explicit persistent connection support for discovery.
    pub const EPCSD: u16 = 1 << 1;
}

/// TCP security types (TSAS byte 0 for TRTYPE TCP).
pub mod sectype {
    /// No security.
    pub const NONE: u8 = 0;
    /// TLS 1.2.
    pub const TLS_1_2: u8 = 1;
    /// TLS 1.3.
    pub const TLS_1_3: u8 = 2;
}

/// Size of the discovery log header.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
/// Size of one discovery log entry.
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// The discovery log's size with `numrec` entries (None if it overflows).
pub fn discovery_log_len(numrec: u64) -> Option<u64> {
    numrec
        .checked_mul(DISCOVERY_ENTRY_LEN as u64)?
        .checked_add(DISCOVERY_HEADER_LEN as u64)
}

/// The discovery log header (1024 bytes): `0 genctr u64  8 numrec u64  16 recfmt u16  18 dlpf
/// u8  20 tdlpl u32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log does (a host re-reads until it is stable).
    pub genctr: u64,
    /// Number of entries.
    pub numrec: u64,
    /// Record format (0).
    pub recfmt: u16,
    /// Discovery log page flags (extended entries, port local, all subsystems).
    pub dlpf: u8,
    /// Total discovery log page length (extended format; 0 otherwise).
    pub tdlpl: u32,
}

impl DiscoveryLogHeader {
    /// Writes the 1024-byte header; returns 1024.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, DISCOVERY_HEADER_LEN)?;
        le::zero(b, 0, DISCOVERY_HEADER_LEN)?;
        le::put_u64(b, 0, self.genctr)?;
        le::put_u64(b, 8, self.numrec)?;
        le::put_u16(b, 16, self.recfmt)?;
        le::put_u8(b, 18, self.dlpf)?;
        le::put_u32(b, 20, self.tdlpl)?;
        Ok(DISCOVERY_HEADER_LEN)
    }

    /// The header in the first bytes of `b`. A host reads the header alone first, so only the
    /// 24 bytes that carry fields are required.
    pub fn decode(b: &[u8]) -> Result<DiscoveryLogHeader> {
        le::need(b, 24)?;
        Ok(DiscoveryLogHeader {
            genctr: le::get_u64(b, 0)?,
            numrec: le::get_u64(b, 8)?,
            recfmt: le::get_u16(b, 16)?,
            dlpf: le::get_u8(b, 18)?,
            tdlpl: le::get_u32(b, 20)?,
        })
    }
}

/// A discovery log entry (1024 bytes).
///
/// ```text
///   0 trtype  1 adrfam  2 subtype  3 treq  4 portid  6 cntlid  8 asqsz  10 eflags
///  32 trsvcid[32] (space padded)  256 subnqn[256] (NUL padded)  512 traddr[256] (space padded)
/// 768 tsas[256] (TCP: byte 0 sectype)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryLogEntry {
    /// Transport type (see [`trtype`]).
    pub trtype: u8,
    /// Address family (see [`adrfam`]).
    pub adrfam: u8,
    /// Subsystem type (see [`subtype`]).
    pub subtype: u8,
    /// Transport requirements (see [`treq`]).
    pub treq: u8,
    /// Port id.
    pub portid: u16,
    /// Controller id (FFFFh: dynamic model, any controller).
    pub cntlid: u16,
    /// Admin max submission queue size.
    pub asqsz: u16,
    /// Entry flags (see [`eflags`]).
    pub eflags: u16,
    /// Transport service id (the TCP port, as text).
    pub trsvcid: Text<32>,
    /// Subsystem NQN.
    pub subnqn: Nqn,
    /// Transport address (the IP address, as text).
    pub traddr: Text<256>,
    /// TSAS byte 0; for TCP the security type (see [`sectype`]). The rest of TSAS is zero.
    pub sectype: u8,
}

impl DiscoveryLogEntry {
    /// Writes the 1024-byte entry at the start of `b`; returns 1024.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, DISCOVERY_ENTRY_LEN)?;
        le::zero(b, 0, DISCOVERY_ENTRY_LEN)?;
        le::put_bytes(b, 0, &[self.trtype, self.adrfam, self.subtype, self.treq])?;
        le::put_u16(b, 4, self.portid)?;
        le::put_u16(b, 6, self.cntlid)?;
        le::put_u16(b, 8, self.asqsz)?;
        le::put_u16(b, 10, self.eflags)?;
        self.trsvcid.encode(b, 32, Pad::Space, "trsvcid")?;
        self.subnqn.encode(b, 256, Pad::Nul, "subnqn")?;
        self.traddr.encode(b, 512, Pad::Space, "traddr")?;
        le::put_u8(b, 768, self.sectype)?;
        Ok(DISCOVERY_ENTRY_LEN)
    }

    /// The entry in the first 1024 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<DiscoveryLogEntry> {
        le::need(b, DISCOVERY_ENTRY_LEN)?;
        Ok(DiscoveryLogEntry {
            trtype: le::get_u8(b, 0)?,
            adrfam: le::get_u8(b, 1)?,
            subtype: le::get_u8(b, 2)?,
            treq: le::get_u8(b, 3)?,
            portid: le::get_u16(b, 4)?,
            cntlid: le::get_u16(b, 6)?,
            asqsz: le::get_u16(b, 8)?,
            eflags: le::get_u16(b, 10)?,
            trsvcid: Text::decode(b, 32, "trsvcid")?,
            subnqn: Nqn::decode(b, 256, "subnqn")?,
            traddr: Text::decode(b, 512, "traddr")?,
            sectype: le::get_u8(b, 768)?,
        })
    }
}

/// Writes a whole discovery log (header with `genctr` and the entries' count, then the entries)
/// into `b`; returns its length.
pub fn encode_discovery_log(
    genctr: u64,
    entries: &[DiscoveryLogEntry],
    b: &mut [u8],
) -> Result<usize> {
    let len = discovery_log_len(entries.len() as u64)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or(WireError::Short {
            need: usize::MAX,
            have: b.len(),
        })?;
    le::need(b, len)?;
    DiscoveryLogHeader {
        genctr,
        numrec: entries.len() as u64,
        ..DiscoveryLogHeader::default()
    }
    .encode(b)?;
    for (i, e) in entries.iter().enumerate() {
        let off = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        e.encode(le::get_bytes_mut(b, off, DISCOVERY_ENTRY_LEN)?)?;
    }
    Ok(len)
}

/// The entries after the header of a discovery log held in `b` (as many whole entries as `b`
/// holds, at most the header's `numrec`).
pub fn discovery_entries(b: &[u8]) -> Result<impl Iterator<Item = Result<DiscoveryLogEntry>> + '_> {
    let h = DiscoveryLogHeader::decode(b)?;
    let body = b.get(DISCOVERY_HEADER_LEN..).unwrap_or(&[]);
    let n = usize::try_from(h.numrec).unwrap_or(usize::MAX);
    Ok(body
        .chunks_exact(DISCOVERY_ENTRY_LEN)
        .take(n)
        .map(DiscoveryLogEntry::decode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fabrics::DISCOVERY_NQN;
    use proptest::prelude::*;

    #[test]
    fn get_log_page_fields() {
        // The host asks for the first 1024 bytes of the discovery log: NUMD = 255 (0's based)
        // in NUMDL, LID 70h, RAE; offset 0x1_0000_0400.
        let mut b = [0u8; 64];
        b[0] = 0x02;
        b[40] = 0x70;
        b[41] = 0x80; // RAE is bit 15
        b[42] = 0xFF; // NUMDL 255
        b[44] = 0x01; // NUMDU 1 -> NUMD = 0x1_00FF + 1
        b[46] = 0x05; // LSI 5
        b[49] = 0x04; // LPOL 0x400
        b[52] = 0x01; // LPOU 1
        let sqe = Sqe::decode(&b).unwrap();
        let g = GetLogPage::from_sqe(&sqe);
        assert_eq!(
            g,
            GetLogPage {
                lid: lid::DISCOVERY,
                lsp: 0,
                rae: true,
                numd: 0x1_0100,
                lsi: 5,
                lpo: 0x1_0000_0400,
                uuid_index: 0,
                ot: false,
                csi: 0,
            }
        );
        assert_eq!(g.len(), 0x1_0100 * 4);
        assert_eq!(g.offset_error(), None);
        let mut back = g.to_sqe(0, 0, Sgl::default()).to_bytes();
        back[1] = 0; // PSDT: the golden has 0
        assert_eq!(back, b);
        // LSP is 7 bits, OT bit 23 and CSI bits 31:24 of cdw14; the largest NUMD is 2^32.
        let mut s = Sqe::new(admin::GET_LOG_PAGE, 0, 0);
        s.cdw10 = 0xFFFF_7F02;
        s.cdw11 = 0xFFFF;
        s.cdw14 = 0x0280_0003;
        s.cdw12 = 2;
        let g = GetLogPage::from_sqe(&s);
        assert_eq!((g.lid, g.lsp, g.rae), (lid::HEALTH, 0x7F, false));
        assert_eq!(g.numd, 1 << 32);
        assert_eq!((g.uuid_index, g.ot, g.csi), (3, true, 2));
        assert_eq!(g.offset_error(), None);
        assert_eq!(GetLogPage::from_sqe(&g.to_sqe(0, 0, Sgl::default())), g);
        let unaligned = GetLogPage {
            lpo: 2,
            ..GetLogPage::bytes(lid::HEALTH, 0, 512)
        };
        assert_eq!(unaligned.offset_error(), Some(Status::INVALID_FIELD));
        assert_eq!(GetLogPage::bytes(lid::HEALTH, 0, 510).numd, 128);
    }

    #[test]
    fn window_copies_and_zero_fills() {
        let page = [1u8, 2, 3, 4, 5, 6];
        let mut out = [0xFFu8; 4];
        assert_eq!(copy_window(&page, 4, &mut out), 2);
        assert_eq!(out, [5, 6, 0, 0]);
        assert_eq!(copy_window(&page, 0, &mut out), 4);
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(copy_window(&page, 6, &mut out), 0);
        assert_eq!(out, [0; 4]);
        assert_eq!(copy_window(&page, u64::MAX, &mut out), 0);
    }

    #[test]
    fn health_golden() {
        let h = HealthLog {
            data_units_read: HealthLog::data_units(512 * 1000 + 1),
            data_units_written: 0x0102_0304_0506_0708_090A_0B0C_0D0E_0F10,
            host_reads: 7,
            host_writes: 9,
            power_on_hours: 3,
            temp_sensors: [300, 0, 0, 0, 0, 0, 0, 0],
            ..HealthLog::default()
        };
        let mut g = [0u8; HEALTH_LEN];
        g[1] = 0x2A; // 298 K = 0x012A
        g[2] = 0x01;
        g[3] = 100;
        g[4] = 10;
        g[32] = 2; // 512,001 bytes: 2 units
        for (i, x) in g[48..64].iter_mut().enumerate() {
            *x = 0x10 - i as u8;
        }
        g[64] = 7;
        g[80] = 9;
        g[128] = 3;
        g[200] = 0x2C; // 300 = 0x012C
        g[201] = 0x01;
        let mut out = [0xEEu8; HEALTH_LEN];
        assert_eq!(h.encode(&mut out), Ok(HEALTH_LEN));
        assert_eq!(out, g);
        assert_eq!(HealthLog::decode(&g), Ok(h));
        assert_eq!(HealthLog::data_units(0), 0);
        assert_eq!(HealthLog::data_units(1), 1);
        assert_eq!(HealthLog::data_units(512_000), 1);
        assert!(HealthLog::decode(&g[..511]).is_err());
    }

    #[test]
    fn error_entry_golden() {
        let e = ErrorEntry {
            error_count: 1,
            sqid: 2,
            cid: 0x1234,
            status: Status::LBA_OUT_OF_RANGE,
            location: 0xFFFF,
            lba: 0x10,
            nsid: 1,
            trtype: trtype::TCP,
            ..ErrorEntry::default()
        };
        let mut g = [0u8; ERROR_ENTRY_LEN];
        g[0] = 1;
        g[8] = 2;
        g[10] = 0x34;
        g[11] = 0x12;
        g[12] = 0x00; // status 0x8100: SC 80h << 1, DNR
        g[13] = 0x81;
        g[14] = 0xFF;
        g[15] = 0xFF;
        g[16] = 0x10;
        g[24] = 1;
        g[29] = 3;
        let mut out = [0u8; ERROR_ENTRY_LEN];
        e.encode(&mut out).unwrap();
        assert_eq!(out, g);
        assert_eq!(ErrorEntry::decode(&g), Ok(e));
        assert!(ErrorEntry::decode(&g[..63]).is_err());
    }

    #[test]
    fn changed_ns_list() {
        let mut b = vec![0xFFu8; CHANGED_NS_LEN];
        encode_changed_ns([], &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        match ChangedNs::decode(&b).unwrap() {
            ChangedNs::List(mut l) => assert_eq!(l.next(), None),
            ChangedNs::Overflow => panic!("empty list read as overflow"),
        }
        encode_changed_ns([3, 1], &mut b).unwrap();
        assert_eq!(&b[..12], &[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        match ChangedNs::decode(&b).unwrap() {
            ChangedNs::List(l) => assert_eq!(l.collect::<Vec<_>>(), vec![3, 1]),
            ChangedNs::Overflow => panic!(),
        }
        encode_changed_ns(1..=1024, &mut b).unwrap();
        assert_eq!(&b[4092..], &1024u32.to_le_bytes());
        encode_changed_ns(1..=1025, &mut b).unwrap();
        assert_eq!(&b[..4], &[0xFF; 4]);
        assert!(b[4..].iter().all(|&x| x == 0));
        assert!(matches!(ChangedNs::decode(&b), Ok(ChangedNs::Overflow)));
        assert!(ChangedNs::decode(&b[..4095]).is_err());
    }

    #[test]
    fn supported_and_effects() {
        let mut b = vec![0xFFu8; SUPPORTED_LEN];
        encode_supported(&[lid::SUPPORTED, lid::HEALTH, lid::DISCOVERY], &mut b).unwrap();
        assert_eq!(&b[..12], &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(b[0x70 * 4], 1);
        assert_eq!(supported_entry(&b, lid::DISCOVERY), Ok(LSUPP));
        assert_eq!(supported_entry(&b, lid::ERROR), Ok(0));
        assert_eq!(supported_entry(&b, 0xFF), Ok(0));

        let mut e = vec![0xFFu8; CMD_EFFECTS_LEN];
        encode_command_effects(
            &[(admin::IDENTIFY, effects::CSUPP)],
            &[(0x01, effects::CSUPP | effects::LBCC)],
            &mut e,
        )
        .unwrap();
        assert_eq!(e[24], 1); // admin opcode 06h at dword 6
        assert_eq!(e[1024 + 4], 3); // I/O Write at dword 257
        assert_eq!(command_effect(&e, true, 0x01), Ok(3));
        assert_eq!(command_effect(&e, false, admin::IDENTIFY), Ok(1));
        assert_eq!(command_effect(&e, true, 0xFF), Ok(0));
        assert!(command_effect(&e[..100], true, 0).is_err());
    }

    #[test]
    fn firmware_slot() {
        let mut f = FirmwareSlotLog {
            afi: 1,
            ..FirmwareSlotLog::default()
        };
        f.frs[0] = Text::new("0.1").unwrap();
        let mut b = [0xAAu8; FW_SLOT_LEN];
        f.encode(&mut b).unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(&b[8..16], b"0.1     ");
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(FirmwareSlotLog::decode(&b), Ok(f));
    }

    const SUBNQN: &str = "nqn.2016-06.io.spdk:cnode1";

    fn golden_entry() -> Vec<u8> {
        let mut g = vec![0u8; DISCOVERY_ENTRY_LEN];
        g[0] = 3; // TCP
        g[1] = 1; // IPv4
        g[2] = 2; // NVMe subsystem
        g[3] = 2; // secure channel not required
        g[4] = 1; // portid 1
        g[6] = 0xFF; // cntlid FFFFh
        g[7] = 0xFF;
        g[8] = 128; // asqsz
        g[32..64].copy_from_slice(b"4420                            ");
        g[256..256 + SUBNQN.len()].copy_from_slice(SUBNQN.as_bytes());
        g[512..768].fill(b' ');
        g[512..521].copy_from_slice(b"127.0.0.1");
        g[768] = 0; // sectype none
        g
    }

    fn sample_entry() -> DiscoveryLogEntry {
        DiscoveryLogEntry {
            trtype: trtype::TCP,
            adrfam: adrfam::IPV4,
            subtype: subtype::NVME,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED,
            portid: 1,
            cntlid: 0xFFFF,
            asqsz: 128,
            eflags: 0,
            trsvcid: Text::new("4420").unwrap(),
            subnqn: Nqn::new(SUBNQN).unwrap(),
            traddr: Text::new("127.0.0.1").unwrap(),
            sectype: sectype::NONE,
        }
    }

    #[test]
    fn discovery_entry_golden() {
        let mut out = vec![0xEEu8; DISCOVERY_ENTRY_LEN];
        assert_eq!(sample_entry().encode(&mut out), Ok(DISCOVERY_ENTRY_LEN));
        assert_eq!(out, golden_entry());
        assert_eq!(
            DiscoveryLogEntry::decode(&golden_entry()),
            Ok(sample_entry())
        );
        assert!(DiscoveryLogEntry::decode(&golden_entry()[..1023]).is_err());
    }

    #[test]
    fn discovery_log_golden() {
        let current = DiscoveryLogEntry {
            subtype: subtype::CURRENT_DISCOVERY,
            subnqn: Nqn::new(DISCOVERY_NQN).unwrap(),
            eflags: eflags::EPCSD,
            ..sample_entry()
        };
        let mut b = vec![0xEEu8; 3 * 1024 + 10];
        assert_eq!(
            encode_discovery_log(7, &[sample_entry(), current], &mut b),
            Ok(3 * 1024)
        );
        let mut h = vec![0u8; DISCOVERY_HEADER_LEN];
        h[0] = 7; // genctr
        h[8] = 2; // numrec
        assert_eq!(&b[..1024], &h[..]);
        assert_eq!(&b[1024..2048], &golden_entry()[..]);
        assert_eq!(b[2048 + 2], 3);
        assert_eq!(b[2048 + 10], 2);
        assert_eq!(b[3072], 0xEE);
        let header = DiscoveryLogHeader::decode(&b).unwrap();
        assert_eq!((header.genctr, header.numrec, header.recfmt), (7, 2, 0));
        let all: Vec<_> = discovery_entries(&b[..3072]).unwrap().collect();
        assert_eq!(all, vec![Ok(sample_entry()), Ok(current)]);
        // A header read alone (the host's first, short read) decodes.
        assert_eq!(DiscoveryLogHeader::decode(&b[..24]), Ok(header));
        assert!(DiscoveryLogHeader::decode(&b[..23]).is_err());
        assert_eq!(discovery_entries(&b[..1500]).unwrap().count(), 0);
        assert!(encode_discovery_log(0, &[sample_entry()], &mut b[..2047]).is_err());
        assert_eq!(discovery_log_len(u64::MAX), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn decoders_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..4200),
                                   ascii in any::<bool>()) {
            let mut b = b;
            if ascii {
                for x in &mut b {
                    *x &= 0x7F;
                }
            }
            if let Ok(h) = HealthLog::decode(&b) {
                let mut out = [0u8; HEALTH_LEN];
                h.encode(&mut out).unwrap();
                prop_assert_eq!(HealthLog::decode(&out), Ok(h));
            }
            if let Ok(e) = ErrorEntry::decode(&b) {
                let mut out = [0u8; ERROR_ENTRY_LEN];
                e.encode(&mut out).unwrap();
                prop_assert_eq!(ErrorEntry::decode(&out), Ok(e));
            }
            if let Ok(e) = DiscoveryLogEntry::decode(&b) {
                let mut out = vec![0u8; DISCOVERY_ENTRY_LEN];
                if e.encode(&mut out).is_ok() {
                    prop_assert_eq!(DiscoveryLogEntry::decode(&out), Ok(e));
                }
            }
            if let Ok(it) = discovery_entries(&b) {
                prop_assert!(it.count() <= b.len() / DISCOVERY_ENTRY_LEN);
            }
            if let Ok(f) = FirmwareSlotLog::decode(&b) {
                let mut out = [0u8; FW_SLOT_LEN];
                if f.encode(&mut out).is_ok() {
                    prop_assert_eq!(FirmwareSlotLog::decode(&out), Ok(f));
                }
            }
            if let Ok(ChangedNs::List(l)) = ChangedNs::decode(&b) {
                prop_assert!(l.count() <= 1024);
            }
            let _ = supported_entry(&b, 0x70);
            let _ = command_effect(&b, true, 0xFF);
            let _ = DiscoveryLogHeader::decode(&b);
            let mut out = [0u8; 64];
            let n = copy_window(&b, b.len() as u64 / 2, &mut out);
            prop_assert!(n <= 64);
        }

        #[test]
        fn get_log_page_round_trip(b in any::<[u8; 64]>()) {
            let g = GetLogPage::from_sqe(&Sqe::decode(&b).unwrap());
            prop_assert!(g.numd >= 1 && g.numd <= 1 << 32);
            prop_assert_eq!(GetLogPage::from_sqe(&g.to_sqe(0, 0, Sgl::default())), g);
        }

        #[test]
        fn discovery_entry_round_trip(svc in "[0-9]{1,32}", addr in "[0-9a-f:.]{1,256}",
                                      nqn in "[a-z0-9.:-]{1,223}", portid in any::<u16>(),
                                      cntlid in any::<u16>()) {
            let e = DiscoveryLogEntry {
                portid,
                cntlid,
                trsvcid: Text::new(&svc).unwrap(),
                traddr: Text::new(&addr).unwrap(),
                subnqn: Nqn::new(&nqn).unwrap(),
                ..sample_entry()
            };
            let mut out = vec![0u8; DISCOVERY_ENTRY_LEN];
            e.encode(&mut out).unwrap();
            prop_assert_eq!(DiscoveryLogEntry::decode(&out), Ok(e));
        }
    }
}
