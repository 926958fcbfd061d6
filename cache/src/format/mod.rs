//! The on-media format of docs/format.md: the only code that reads or writes the cache's
//! metadata on pmem.
//!
//! Each structure is encoded and decoded with explicit little-endian byte offsets (no
//! transmutes, no packed structs). Decoders turn every malformed byte pattern into a typed
//! [`FormatError`] (or [`KsetError`] for key-sets), never a panic; the lints below hold the
//! module to that. The functions that touch the device ([`format`], [`open`],
//! [`read_slots`], [`write_slot`], [`write_gen`]) are control-path code; [`encode_kset`],
//! [`decode_kset`] and the key iterator run on the data path and do not allocate.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::arithmetic_side_effects
)]

mod bytes;
pub(crate) mod error;
mod generation;
mod info;
mod key;
mod kset;
mod layout;
mod meta;
mod slot;
mod superblock;
mod tails;

pub use error::{Broken, FormatError, KsetEnd, KsetError};
pub use generation::{
    GEN_ENTRY_SIZE, GEN_FIRST, gen_entry_decode, gen_entry_encode, read_gen, read_gen_table,
    write_gen,
};
pub use info::{CacheInfo, CacheMode, INFO_PAYLOAD_LEN};
pub use key::{KEY_SIZE, Key};
pub use kset::{
    KSET_ALIGN, KSET_HEADER, KSET_LAST, KSET_MAGIC, KeyIter, KeySetHeader, KeySetView, KsetExpect,
    KsetId, MAX_KEYS_PER_KSET, MAX_KSET_SIZE, decode_kset, encode_kset, encode_kset_last,
    kset_size,
};
pub use layout::{
    DEFAULT_SEGMENT_SIZE, GEN_TABLE_OFFSET, INFO_OFFSET, Layout, MAX_BLOCK_SIZE, MAX_SEGMENT_SIZE,
    MIN_BLOCK_SIZE, MIN_SEGMENT_SIZE, MIN_SEGMENTS, SB_OFFSET, SB_SIZE, SEGMENT_BASE_ALIGN,
    SLOT_SIZE, TAILS_OFFSET,
};
pub use meta::{FormatParams, MetaWriter, OpenedMeta, format, open};
pub use slot::{
    SLOT_HEADER, SLOT_PAYLOAD_MAX, Slot, SlotRecord, SlotWriter, encode_slot, read_slots,
    write_slot,
};
pub use superblock::{
    COMPAT_KNOWN, INCOMPAT_KNOWN, OriginId, RO_COMPAT_KNOWN, SB_MAGIC, Superblock, VERSION_MAJOR,
    VERSION_MINOR,
};
pub use tails::{LaneTails, LogPos, MAX_LANES, TAILS_PAYLOAD_MAX, Tails};
