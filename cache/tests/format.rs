//! The on-media format: golden byte layouts, layout arithmetic, key-set and slot semantics,
//! format then open, and every way open refuses a device.

use cache::format::*;
use pmem::{CrashPmem, Pmem, PmemFile};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
/// The smallest device format accepts with 1 MiB segments: 8 segments after 64 KiB.
const SMALL: u64 = SEGMENT_BASE_ALIGN + 8 * MIB;

fn origin() -> OriginId {
    OriginId {
        uuid: Uuid::from_u128(0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978),
        blocks: 2 << 20,
        block_size: 512,
    }
}

fn params(lanes: u32) -> FormatParams {
    FormatParams {
        segment_size: 1 << 20,
        format_time: 1_700_000_000,
        format_id: 0x0123_4567_89ab_cdef,
        ..FormatParams::new(
            Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
            origin(),
            lanes,
        )
    }
}

fn golden_superblock() -> Superblock {
    Superblock {
        minor_version: 0,
        incompat: 0,
        ro_compat: 0,
        compat: 0,
        cache_uuid: Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        origin: origin(),
        segment_size: 16 << 20,
        segment_count: 8,
        segment_base: 65536,
        format_time: 1_700_000_000,
        format_id: 0x0123_4567_89ab_cdef,
    }
}

/// Store the CRC-32C of `b` (with its crc field zero) in the crc field at `off`.
fn reseal(b: &mut [u8], off: usize) {
    b[off..off + 4].fill(0);
    let crc = crc32c::crc32c(b);
    b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
}

fn crc_ok(b: &[u8], off: usize) -> bool {
    let mut c = b.to_vec();
    reseal(&mut c, off);
    c == b
}

// ---------------------------------------------------------------------------------------
// Golden byte layouts: a change here is a format change.

#[test]
fn crc32c_is_the_castagnoli_crc_the_spec_names() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn golden_superblock_bytes() {
    let b = golden_superblock().encode();
    assert_eq!(b.len(), 4096);
    assert_eq!(&b[0..8], b"PCACHESB");
    assert_eq!(&b[8..12], &[1, 0, 0, 0], "major 1, minor 0");
    assert!(crc_ok(&b, 12));
    // Computed independently from the spec's table (a CRC-32C written in Python).
    assert_eq!(&b[12..16], &0x25e8_f0b5u32.to_le_bytes(), "crc");
    assert_eq!(&b[16..40], &[0; 24], "no feature flags");
    assert_eq!(
        &b[40..56],
        &[
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
    assert_eq!(&b[56..72], origin().uuid.as_bytes());
    assert_eq!(&b[72..80], &[0, 0, 0x20, 0, 0, 0, 0, 0], "origin blocks");
    assert_eq!(&b[80..84], &[0, 2, 0, 0], "block size 512");
    assert_eq!(&b[84..88], &[0, 0, 0, 1], "segment size 16 MiB");
    assert_eq!(&b[88..92], &[8, 0, 0, 0], "segment count");
    assert_eq!(&b[92..96], &[0; 4]);
    assert_eq!(
        &b[96..104],
        &[0, 0, 1, 0, 0, 0, 0, 0],
        "segment base 64 KiB"
    );
    assert_eq!(&b[104..112], &1_700_000_000u64.to_le_bytes());
    assert_eq!(
        &b[112..120],
        &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01],
        "format id"
    );
    assert!(b[120..].iter().all(|&x| x == 0));
    assert_eq!(Superblock::decode(&b).unwrap(), golden_superblock());
}

#[test]
fn golden_key_bytes() {
    let k = Key {
        seq: 0x0102_0304_0506_0708,
        origin_off: 0x1112_1314_1516_1718,
        len: 0x2122_2324,
        data_off: 0x3132_3334,
        data_seg: 0x4142_4344,
        data_gen: 0x5152_5354,
        data_crc: 0x6162_6364,
        flags: Key::DIRTY,
    };
    let want: [u8; 40] = [
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // seq
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, // origin offset
        0x24, 0x23, 0x22, 0x21, // length
        0x34, 0x33, 0x32, 0x31, // data offset
        0x44, 0x43, 0x42, 0x41, // data segment
        0x54, 0x53, 0x52, 0x51, // data generation
        0x64, 0x63, 0x62, 0x61, // data crc
        0x01, 0x00, 0x00, 0x00, // flags: DIRTY
    ];
    assert_eq!(k.encode(), want);
    assert_eq!(Key::decode(&want).unwrap(), k);
}

#[test]
fn golden_kset_bytes() {
    let id = KsetId {
        format_id: 0x0123_4567_89ab_cdef,
        lane: 3,
        lane_seq: 9,
        seg_gen: 2,
    };
    let key = Key {
        seq: 1,
        origin_off: 8,
        len: 8,
        data_off: 4096,
        data_seg: 5,
        data_gen: 1,
        data_crc: 0,
        flags: Key::DIRTY,
    };
    let mut out = [0xaau8; 200];
    let n = encode_kset(id, &[key], &mut out).unwrap();
    assert_eq!(n, 128, "64 + 40 rounded up to 64");
    assert_eq!(&out[0..8], b"PCKEYSET");
    assert!(crc_ok(&out[..128], 8));
    assert_eq!(
        &out[8..12],
        &0x771f_f48bu32.to_le_bytes(),
        "crc (independently computed)"
    );
    assert_eq!(&out[12..16], &[1, 0, 0, 0], "one key, no flags");
    assert_eq!(&out[16..20], &[2, 0, 0, 0], "segment generation");
    assert_eq!(&out[20..24], &[3, 0, 0, 0], "lane");
    assert_eq!(&out[24..32], &[9, 0, 0, 0, 0, 0, 0, 0], "lane sequence");
    assert_eq!(&out[32..40], &[0; 8], "no next segment");
    assert_eq!(
        &out[40..48],
        &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01],
        "format id"
    );
    assert_eq!(&out[48..64], &[0; 16]);
    assert_eq!(&out[64..104], &key.encode());
    assert_eq!(&out[104..128], &[0; 24], "padding");
    assert!(
        out[128..].iter().all(|&b| b == 0xaa),
        "bytes past the key-set untouched"
    );

    let n = encode_kset_last(id, 77, 4, &mut out).unwrap();
    assert_eq!(n, 64);
    assert_eq!(&out[12..16], &[0, 0, 1, 0], "no keys, LAST");
    assert_eq!(
        &out[32..40],
        &[77, 0, 0, 0, 4, 0, 0, 0],
        "next segment and generation"
    );
    assert!(crc_ok(&out[..64], 8));
}

#[test]
fn golden_slot_info_tails_and_gen_entry() {
    let s = encode_slot(5, b"abc").unwrap();
    assert_eq!(&s[0..8], &5u64.to_le_bytes());
    assert_eq!(&s[12..16], &3u32.to_le_bytes());
    assert_eq!(&s[16..19], b"abc");
    assert!(s[19..].iter().all(|&b| b == 0));
    assert!(crc_ok(&s, 8));

    let info = CacheInfo {
        mode: CacheMode::WriteAround,
        flags: CacheInfo::DATA_CRC | CacheInfo::DURABLE,
        gc_percent: 70,
        promotion: 2,
        seq_cutoff: 1 << 20,
        writeback_target: 2500,
        writeback_rate: 100 << 20,
    };
    let p = info.encode();
    // Payload offset = spec slot offset − 16.
    assert_eq!(&p[0..4], &2u32.to_le_bytes(), "mode at slot offset 16");
    assert_eq!(&p[4..8], &5u32.to_le_bytes(), "flags at 20");
    assert_eq!(&p[8..12], &70u32.to_le_bytes(), "gc_percent at 24");
    assert_eq!(&p[12..16], &2u32.to_le_bytes(), "promotion at 28");
    assert_eq!(&p[16..24], &(1u64 << 20).to_le_bytes(), "cutoff at 32");
    assert_eq!(&p[24..32], &2500u64.to_le_bytes(), "target at 40");
    assert_eq!(&p[32..40], &(100u64 << 20).to_le_bytes(), "rate at 48");

    let lanes = [
        LaneTails {
            key_tail: LogPos { seg: 1, off: 64 },
            dirty_tail: LogPos { seg: 2, off: 128 },
        },
        LaneTails {
            key_tail: LogPos { seg: 3, off: 0 },
            dirty_tail: LogPos { seg: 4, off: 192 },
        },
    ];
    let t = Tails::new(42, &lanes).unwrap();
    let p = t.encode();
    assert_eq!(t.encoded_len(), 48);
    assert_eq!(
        &p[0..4],
        &2u32.to_le_bytes(),
        "lane count at slot offset 16"
    );
    assert_eq!(&p[4..8], &[0; 4]);
    assert_eq!(
        &p[8..16],
        &42u64.to_le_bytes(),
        "written-back sequence at 24"
    );
    assert_eq!(
        &p[16..32],
        &[1, 0, 0, 0, 64, 0, 0, 0, 2, 0, 0, 0, 128, 0, 0, 0],
        "lane 0 at 32"
    );
    assert_eq!(
        &p[32..48],
        &[3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 192, 0, 0, 0],
        "lane 1 at 48"
    );

    let e = gen_entry_encode(3, 7);
    assert_eq!(e as u32, 7);
    assert_eq!((e >> 32) as u32, crc32c::crc32c(&[3, 0, 0, 0, 7, 0, 0, 0]));
}

#[test]
fn constants_match_the_spec() {
    assert_eq!(SB_MAGIC.to_le_bytes(), *b"PCACHESB");
    assert_eq!(KSET_MAGIC.to_le_bytes(), *b"PCKEYSET");
    assert_eq!(
        (SB_OFFSET, INFO_OFFSET, TAILS_OFFSET, GEN_TABLE_OFFSET),
        (0, 4096, 12288, 20480)
    );
    assert_eq!(
        (SB_SIZE, SLOT_SIZE, SLOT_HEADER, SLOT_PAYLOAD_MAX),
        (4096, 4096, 16, 4080)
    );
    assert_eq!(
        (KEY_SIZE, KSET_HEADER, MAX_KEYS_PER_KSET, MAX_LANES),
        (40, 64, 100, 64)
    );
    assert_eq!(kset_size(MAX_KEYS_PER_KSET), MAX_KSET_SIZE);
    assert_eq!(
        (kset_size(0), kset_size(1), kset_size(2), kset_size(3)),
        (64, 128, 192, 192)
    );
    assert_eq!(TAILS_PAYLOAD_MAX, 16 + 64 * 16);
    assert_eq!(INFO_PAYLOAD_LEN, 40);
    assert_eq!((VERSION_MAJOR, VERSION_MINOR), (1, 0));
}

// ---------------------------------------------------------------------------------------
// Layout.

#[test]
fn layout_of_the_smallest_device() {
    let l = Layout::new(SMALL, 1 << 20, 512).unwrap();
    assert_eq!(
        (l.segment_count(), l.segment_base(), l.gen_table_len()),
        (8, 65536, 4096)
    );
    assert_eq!(l.segment_offset(0).unwrap(), 65536);
    assert_eq!(l.segment_offset(7).unwrap(), 65536 + 7 * MIB);
    assert_eq!(l.end(), SMALL);
    assert_eq!(l.gen_entry_offset(7).unwrap(), 20480 + 56);
    assert_eq!(l.blocks_per_segment(), 2048);
    assert_eq!(l.segment_offset(8).unwrap_err().errno(), libc::EINVAL);
    assert!(l.gen_entry_offset(8).is_err());

    let e = Layout::new(SMALL - 1, 1 << 20, 512).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert_eq!(
        Layout::new(0, 1 << 20, 512).unwrap_err().errno(),
        libc::ENOSPC
    );
}

#[test]
fn layout_of_a_large_device() {
    let l = Layout::new(1 << 40, 16 << 20, 4096).unwrap();
    // 65 535 segments: their 512 KiB table pushes the base to 576 KiB, past one segment's room.
    assert_eq!(l.segment_count(), 65535);
    assert_eq!(l.segment_base(), 589_824);
    assert!(l.end() <= 1 << 40);
    // A segment count past u32 is refused, not truncated.
    let e = Layout::new(u64::MAX, 1 << 20, 512).unwrap_err();
    assert_eq!(e.errno(), libc::E2BIG, "{e}");
}

#[test]
fn layout_rejects_bad_sizes() {
    for (seg, bs) in [
        (3 << 20, 512),
        (1 << 19, 512),
        (1 << 31, 512),
        (0, 512),
        (1 << 20, 256),
        (1 << 20, 8192),
        (1 << 20, 1000),
        (1 << 20, 0),
    ] {
        let e = Layout::new(1 << 40, seg, bs).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{seg} {bs}: {e}");
    }
    assert!(Layout::new(1 << 40, 1 << 30, 4096).is_ok());
    assert!(Layout::with_count(SMALL, 1 << 20, 512, 7).is_err());
    assert_eq!(
        Layout::with_count(SMALL, 1 << 20, 512, 9)
            .unwrap_err()
            .errno(),
        libc::ENOSPC
    );
}

// ---------------------------------------------------------------------------------------
// Key-sets: end of log versus corruption.

const ID: KsetId = KsetId {
    format_id: 0xfeed,
    lane: 1,
    lane_seq: 5,
    seg_gen: 3,
};

fn keys(n: usize) -> Vec<Key> {
    (0..n as u64)
        .map(|i| Key {
            seq: 100 + i,
            origin_off: i * 8,
            len: 8,
            data_off: (i as u32) * 4096,
            data_seg: 9,
            data_gen: 2,
            data_crc: i as u32,
            flags: Key::DIRTY,
        })
        .collect()
}

#[test]
fn kset_round_trip_and_iteration() {
    for n in [1, 2, 50, 100] {
        let ks = keys(n);
        let mut buf = [0u8; MAX_KSET_SIZE];
        let size = encode_kset(ID, &ks, &mut buf).unwrap();
        assert_eq!(size, kset_size(n));
        let v = decode_kset(&buf, ID).unwrap();
        assert_eq!(
            (v.size(), v.len(), v.is_last(), v.next_segment()),
            (size, n, false, None)
        );
        assert_eq!(v.keys().len(), n);
        assert_eq!(v.keys().collect::<Vec<_>>(), ks);
        assert_eq!(v.keys().next_back(), ks.last().copied());
        let h = v.header();
        assert_eq!(
            (
                h.lane,
                h.lane_seq,
                h.seg_gen,
                h.format_id,
                usize::from(h.count)
            ),
            (1, 5, 3, 0xfeed, n)
        );
        // Exactly its own bytes suffice.
        assert!(decode_kset(&buf[..size], ID).is_ok());
    }
    let mut buf = [0u8; 64];
    encode_kset_last(ID, 6, 8, &mut buf).unwrap();
    let v = decode_kset(&buf, ID).unwrap();
    assert!(v.is_last() && v.is_empty());
    assert_eq!(v.next_segment(), Some((6, 8)));
}

fn end_of(r: Result<KeySetView<'_>, KsetError>) -> KsetEnd {
    match r {
        Err(KsetError::End(e)) => e,
        other => panic!("expected the end of the log, got {other:?}"),
    }
}

fn corrupt_of(r: Result<KeySetView<'_>, KsetError>) -> String {
    match r {
        Err(KsetError::Corrupt(e)) => {
            assert_eq!(e.errno(), libc::EIO);
            e.to_string()
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn kset_end_of_log_cases() {
    let mut buf = [0u8; MAX_KSET_SIZE];
    let size = encode_kset(ID, &keys(3), &mut buf).unwrap();
    assert_eq!(end_of(decode_kset(&[0; 4096], ID)), KsetEnd::BadMagic);
    assert_eq!(
        end_of(decode_kset(&buf[..63], ID)),
        KsetEnd::Truncated { have: 63, need: 64 }
    );
    assert_eq!(
        end_of(decode_kset(&buf[..size - 1], ID)),
        KsetEnd::Truncated {
            have: size - 1,
            need: size
        }
    );
    for (expect, want) in [
        (
            KsetId { format_id: 1, ..ID },
            KsetEnd::OtherFormat { found: 0xfeed },
        ),
        (
            KsetId { seg_gen: 4, ..ID },
            KsetEnd::StaleGen {
                found: 3,
                expected: 4,
            },
        ),
        (KsetId { lane: 0, ..ID }, KsetEnd::OtherLane { found: 1 }),
        (
            KsetId { lane_seq: 4, ..ID },
            KsetEnd::OutOfSequence {
                found: 5,
                expected: 4,
            },
        ),
    ] {
        assert_eq!(end_of(decode_kset(&buf, expect)), want);
    }
    // A torn write: any byte of the key-set wrong (here a key byte, then the padding).
    for at in [70, size - 1] {
        let mut torn = buf;
        torn[at] ^= 1;
        assert!(matches!(
            end_of(decode_kset(&torn, ID)),
            KsetEnd::BadCrc { .. }
        ));
    }
    // A count too large for the bytes at hand cannot be checked: also the end.
    let mut big = buf;
    big[12..14].copy_from_slice(&101u16.to_le_bytes());
    assert!(matches!(
        end_of(decode_kset(&big, ID)),
        KsetEnd::Truncated { need: 4096.., .. }
    ));
    let e = decode_kset(&[0; 4], ID).unwrap_err();
    assert_eq!(e.errno(), libc::ENODATA);
    assert!(e.to_string().starts_with("end of log"), "{e}");
}

/// A key-set with header `h` and raw key bytes, crc sealed, in a buffer of `len` bytes.
fn sealed_kset(h: KeySetHeader, raw_keys: &[[u8; 40]], len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..64].copy_from_slice(&h.encode());
    for (i, k) in raw_keys.iter().enumerate() {
        b[64 + 40 * i..104 + 40 * i].copy_from_slice(k);
    }
    let size = kset_size(raw_keys.len().max(usize::from(h.count)));
    reseal(&mut b[..size], 8);
    b
}

#[test]
fn kset_intact_but_impossible_is_corruption() {
    let base = KeySetHeader {
        crc: 0,
        count: 1,
        flags: 0,
        seg_gen: 3,
        lane: 1,
        lane_seq: 5,
        next_segment: 0,
        next_gen: 0,
        format_id: 0xfeed,
    };
    let good = keys(1)[0].encode();

    // 101 keys with a valid crc over all of them (given enough bytes to check it).
    let many: Vec<[u8; 40]> = keys(101).iter().map(Key::encode).collect();
    let b = sealed_kset(KeySetHeader { count: 101, ..base }, &many, 8192);
    assert!(corrupt_of(decode_kset(&b, ID)).contains("101 keys"));

    let cases: Vec<(KeySetHeader, Vec<[u8; 40]>, &str)> = vec![
        (
            KeySetHeader { flags: 2, ..base },
            vec![good],
            "unknown flags",
        ),
        (
            KeySetHeader {
                flags: KSET_LAST,
                next_gen: 1,
                ..base
            },
            vec![good],
            "LAST key-set with 1 keys",
        ),
        (
            KeySetHeader {
                flags: KSET_LAST,
                count: 0,
                next_gen: 0,
                ..base
            },
            vec![],
            "generation 0",
        ),
        (KeySetHeader { count: 0, ..base }, vec![], "no keys"),
        (
            KeySetHeader {
                next_segment: 4,
                ..base
            },
            vec![good],
            "without LAST",
        ),
        (
            base,
            vec![
                Key {
                    len: 0,
                    ..keys(1)[0]
                }
                .encode(),
            ],
            "key 0: length 0",
        ),
        (
            base,
            vec![
                Key {
                    flags: 8,
                    ..keys(1)[0]
                }
                .encode(),
            ],
            "key 0: unknown flags",
        ),
        (
            base,
            vec![
                Key {
                    flags: Key::UNMAP,
                    ..keys(1)[0]
                }
                .encode(),
            ],
            "UNMAP key names data",
        ),
    ];
    for (h, ks, why) in cases {
        let b = sealed_kset(h, &ks, 4096);
        let msg = corrupt_of(decode_kset(&b, ID));
        assert!(
            msg.contains(why) && msg.contains("lane 1 sequence 5"),
            "{why}: {msg}"
        );
    }

    // Nonzero reserved header bytes and nonzero padding, under a valid crc.
    let mut b = sealed_kset(base, &[good], 4096);
    b[60] = 1;
    reseal(&mut b[..128], 8);
    assert!(corrupt_of(decode_kset(&b, ID)).contains("reserved"));
    let mut b = sealed_kset(base, &[good], 4096);
    b[127] = 1;
    reseal(&mut b[..128], 8);
    assert!(corrupt_of(decode_kset(&b, ID)).contains("padding"));
}

#[test]
fn kset_encoder_refuses_bad_input() {
    let mut buf = [0u8; 8192];
    assert_eq!(
        encode_kset(ID, &[], &mut buf).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        encode_kset(ID, &keys(101), &mut buf).unwrap_err().errno(),
        libc::E2BIG
    );
    assert_eq!(
        encode_kset(ID, &keys(3), &mut buf[..191])
            .unwrap_err()
            .errno(),
        libc::ENOSPC
    );
    assert_eq!(
        encode_kset_last(ID, 1, 1, &mut buf[..63])
            .unwrap_err()
            .errno(),
        libc::ENOSPC
    );
    let bad = Key {
        seq: 0,
        ..keys(1)[0]
    };
    let e = encode_kset(ID, &[keys(1)[0], bad], &mut buf).unwrap_err();
    assert!(e.to_string().contains("key 1: sequence 0"), "{e}");
    for id in [
        KsetId { lane: 64, ..ID },
        KsetId { lane_seq: 0, ..ID },
        KsetId { seg_gen: 0, ..ID },
        KsetId { format_id: 0, ..ID },
    ] {
        assert_eq!(
            encode_kset(id, &keys(1), &mut buf).unwrap_err().errno(),
            libc::EINVAL,
            "{id:?}"
        );
    }
    assert_eq!(
        encode_kset_last(ID, 1, 0, &mut buf).unwrap_err().errno(),
        libc::EINVAL
    );
}

#[test]
fn key_and_kset_bounds() {
    let l = Layout::new(SMALL, 1 << 20, 512).unwrap();
    let k = Key {
        seq: 1,
        origin_off: 10,
        len: 2048,
        data_off: 0,
        data_seg: 7,
        data_gen: 1,
        data_crc: 0,
        flags: 0,
    };
    k.check_bounds(&l, 2058).unwrap();
    for bad in [
        Key {
            origin_off: 11,
            ..k
        }, // past the origin
        Key { data_seg: 8, ..k },   // no such segment
        Key { data_off: 512, ..k }, // crosses the segment end
        Key {
            data_off: 100,
            len: 1,
            ..k
        }, // not block aligned
        Key {
            origin_off: u64::MAX,
            len: 1,
            ..k
        }, // overflows
    ] {
        assert_eq!(
            bad.check_bounds(&l, 2058).unwrap_err().errno(),
            libc::EIO,
            "{bad:?}"
        );
    }
    let tomb = Key {
        flags: Key::UNMAP | Key::DIRTY,
        data_seg: 0,
        data_gen: 0,
        ..k
    };
    tomb.validate().unwrap();
    tomb.check_bounds(&l, 2058).unwrap();
    assert!(tomb.is_unmap() && tomb.is_dirty());

    let mut buf = [0u8; 64];
    encode_kset_last(ID, 8, 1, &mut buf).unwrap();
    let v = decode_kset(&buf, ID).unwrap();
    assert!(v.check_bounds(&l, 1).is_err());
    let mut buf = [0u8; 4096];
    encode_kset(ID, &[k], &mut buf).unwrap();
    decode_kset(&buf, ID)
        .unwrap()
        .check_bounds(&l, 2058)
        .unwrap();
    assert!(
        decode_kset(&buf, ID)
            .unwrap()
            .check_bounds(&l, 2057)
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Dual slots.

const BASE: u64 = 4096;

#[test]
fn slots_take_the_newest_and_writer_alternates() {
    let p = CrashPmem::new(16384);
    let e = read_slots(&p, BASE).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("no valid copy"), "{e}");

    let mut w = SlotWriter::new(BASE, Slot::One, 0);
    for (i, payload) in [&b"one"[..], b"two", b"", &[7; SLOT_PAYLOAD_MAX]]
        .into_iter()
        .enumerate()
    {
        let seq = w.write(&p, payload).unwrap();
        assert_eq!(seq, i as u64 + 1);
        assert_eq!(p.pending_words(), 0, "a returned write is durable");
        let (rec, slot, s) = read_slots(&p, BASE).unwrap();
        assert_eq!((rec.payload(), slot, s), (payload, w.slot(), seq));
        assert_eq!(slot, if i % 2 == 0 { Slot::Zero } else { Slot::One });
    }
    let e = w.write(&p, &[0; SLOT_PAYLOAD_MAX + 1]).unwrap_err();
    assert_eq!(e.errno(), libc::E2BIG);
    assert_eq!(w.seq(), 4, "a failed write changes nothing");
    assert_eq!(
        write_slot(&p, BASE, Slot::Zero, u64::MAX, b"x")
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert!(write_slot(&p, u64::MAX, Slot::Zero, 1, b"x").is_err());
}

#[test]
fn damaged_slot_is_ignored_only_when_it_is_the_older_copy() {
    let p = CrashPmem::new(16384);
    let mut w = SlotWriter::new(BASE, Slot::One, 0);
    w.write(&p, b"first").unwrap(); // slot 0, seq 1
    w.write(&p, b"second").unwrap(); // slot 1, seq 2
    let flip = |off: u64| {
        let mut b = [0u8; 1];
        p.read(off, &mut b).unwrap();
        p.write(off, &[b[0] ^ 0x40]).unwrap();
    };
    // The older copy (seq 1) damaged: the newest is still found.
    flip(BASE + 20);
    assert_eq!(read_slots(&p, BASE).unwrap().0.payload(), b"second");
    flip(BASE + 20);
    // The newest copy damaged: refusing beats silently going back to seq 1.
    flip(BASE + 4096 + 20);
    let e = read_slots(&p, BASE).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("newer record may be lost"), "{e}");
    flip(BASE + 4096 + 20);

    // Equal sequences, or an intact slot breaking the rules, are corruption too.
    let same = encode_slot(2, b"other").unwrap();
    p.write(BASE, &same).unwrap();
    assert!(
        read_slots(&p, BASE)
            .unwrap_err()
            .to_string()
            .contains("sequence 2")
    );
    let mut bad = encode_slot(1, b"abc").unwrap();
    bad[100] = 1; // past the payload
    reseal(&mut bad, 8);
    p.write(BASE, &bad).unwrap();
    assert!(
        read_slots(&p, BASE)
            .unwrap_err()
            .to_string()
            .contains("past the 3-byte payload")
    );
    let mut bad = encode_slot(1, b"abc").unwrap();
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    reseal(&mut bad, 8);
    p.write(BASE, &bad).unwrap();
    assert!(
        read_slots(&p, BASE)
            .unwrap_err()
            .to_string()
            .contains("payload length 5000")
    );
}

#[test]
fn slot_reader_names_the_record() {
    let p = CrashPmem::new(32768);
    assert!(
        read_slots(&p, INFO_OFFSET)
            .unwrap_err()
            .to_string()
            .contains("cache info")
    );
    assert!(
        read_slots(&p, TAILS_OFFSET)
            .unwrap_err()
            .to_string()
            .contains("tails")
    );
    assert_eq!(
        read_slots(&p, 30000).unwrap_err().errno(),
        libc::EINVAL,
        "out of range"
    );
}

// ---------------------------------------------------------------------------------------
// Structure rules.

#[test]
fn tails_rules() {
    let lane = LaneTails::default();
    assert_eq!(Tails::new(0, &[]).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        Tails::new(0, &[lane; 65]).unwrap_err().errno(),
        libc::EINVAL
    );
    let odd = LaneTails {
        key_tail: LogPos { seg: 0, off: 100 },
        ..lane
    };
    assert!(Tails::new(0, &[odd]).is_err());
    let mut t = Tails::new(7, &[lane; 64]).unwrap();
    assert_eq!((t.lanes().len(), t.encoded_len()), (64, TAILS_PAYLOAD_MAX));
    t.lanes_mut()[63].dirty_tail = LogPos { seg: 5, off: 4096 };
    assert_eq!(Tails::decode(&t.encode()).unwrap(), t);

    let l = Layout::new(SMALL, 1 << 20, 512).unwrap();
    t.check_bounds(&l).unwrap();
    t.lanes_mut()[0].key_tail = LogPos { seg: 8, off: 0 };
    assert_eq!(t.check_bounds(&l).unwrap_err().errno(), libc::EIO);
    t.lanes_mut()[0].key_tail = LogPos {
        seg: 0,
        off: 1 << 20,
    };
    assert!(t.check_bounds(&l).is_err());

    let mut p = Tails::new(0, &[lane; 2]).unwrap().encode();
    assert!(Tails::decode(&p[..47]).is_err(), "shorter than its lanes");
    p[4] = 1;
    assert!(
        Tails::decode(&p)
            .unwrap_err()
            .to_string()
            .contains("reserved")
    );
    p[4] = 0;
    p[0] = 0;
    assert!(Tails::decode(&p).is_err(), "0 lanes");
    p[0] = 65;
    assert!(Tails::decode(&p).is_err(), "65 lanes");
}

#[test]
fn cache_info_rules() {
    let ok = CacheInfo::default();
    ok.validate().unwrap();
    assert_eq!(CacheInfo::decode(&ok.encode()).unwrap(), ok);
    for bad in [
        CacheInfo {
            gc_percent: 91,
            ..ok
        },
        CacheInfo { flags: 8, ..ok },
        CacheInfo {
            writeback_target: 10_001,
            ..ok
        },
    ] {
        assert_eq!(bad.validate().unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            CacheInfo::decode(&bad.encode()).unwrap_err().errno(),
            libc::EIO
        );
    }
    let mut b = ok.encode();
    b[0] = 4;
    assert!(
        CacheInfo::decode(&b)
            .unwrap_err()
            .to_string()
            .contains("mode 4")
    );
    assert!(CacheInfo::decode(&b[..39]).is_err());
    // A later minor version's longer payload: the extra bytes are ignored.
    let mut longer = ok.encode().to_vec();
    longer.extend_from_slice(&[9; 8]);
    assert_eq!(CacheInfo::decode(&longer).unwrap(), ok);
    for m in [
        CacheMode::WriteBack,
        CacheMode::WriteThrough,
        CacheMode::WriteAround,
        CacheMode::PassThrough,
    ] {
        assert_eq!(CacheMode::from_raw(m.to_raw()), Some(m));
    }
    assert!(ok.has(0) && !ok.has(CacheInfo::DATA_CRC));
}

#[test]
fn gen_entries_check_themselves() {
    for (seg, g) in [(0, 1), (5, 2), (u32::MAX, u32::MAX)] {
        assert_eq!(gen_entry_decode(seg, gen_entry_encode(seg, g)).unwrap(), g);
    }
    let e = gen_entry_decode(6, gen_entry_encode(5, 2)).unwrap_err();
    assert!(
        matches!(e, FormatError::Corrupt { .. }) && e.to_string().contains("segment 6"),
        "{e}"
    );
    assert!(gen_entry_decode(0, 0).is_err());
    assert!(
        gen_entry_decode(3, gen_entry_encode(3, 0))
            .unwrap_err()
            .to_string()
            .contains("generation 0")
    );
    assert!(gen_entry_decode(3, gen_entry_encode(3, 9) ^ 1).is_err());
}

// ---------------------------------------------------------------------------------------
// Format and open.

fn check_fresh(m: &OpenedMeta, p: &FormatParams, size: u64) {
    let sb = &m.superblock;
    assert_eq!(
        (sb.cache_uuid, sb.origin, sb.format_id, sb.format_time),
        (p.cache_uuid, p.origin, p.format_id, p.format_time)
    );
    assert_eq!(
        m.layout,
        Layout::new(size, p.segment_size, p.origin.block_size).unwrap()
    );
    assert_eq!(m.info, p.info);
    assert_eq!((m.info_slot.slot(), m.info_slot.seq()), (Slot::Zero, 1));
    assert_eq!((m.tails_slot.slot(), m.tails_slot.seq()), (Slot::Zero, 1));
    assert_eq!(m.tails.lanes().len(), p.lanes as usize);
    assert_eq!(m.tails.written_back_seq, 0);
    for (i, l) in m.tails.lanes().iter().enumerate() {
        let start = LogPos {
            seg: i as u32,
            off: 0,
        };
        assert_eq!((l.key_tail, l.dirty_tail), (start, start));
    }
    assert_eq!(m.gens, vec![GEN_FIRST; m.layout.segment_count() as usize]);
    assert!(!m.read_only);
}

#[test]
fn format_then_open_on_an_anonymous_mapping() {
    let size = SMALL + 3 * MIB + 5;
    let p = PmemFile::anonymous(size).unwrap();
    let prm = FormatParams {
        info: CacheInfo {
            mode: CacheMode::WriteThrough,
            flags: CacheInfo::DATA_CRC,
            ..CacheInfo::default()
        },
        ..params(4)
    };
    let (sb, info, tails) = format(&p, &prm).unwrap();
    assert_eq!(
        (sb.segment_count, info, tails.lanes().len()),
        (11, prm.info, 4)
    );
    let mut m = open(&p, &origin()).unwrap();
    check_fresh(&m, &prm, size);
    assert_eq!(m.superblock, sb);

    // Settings and tails change through the slot writers and survive a reopen.
    let info = CacheInfo {
        gc_percent: 10,
        ..m.info
    };
    m.info_slot.write(&p, &info.encode()).unwrap();
    m.tails.written_back_seq = 99;
    m.tails.lanes_mut()[2].dirty_tail = LogPos { seg: 9, off: 640 };
    let bytes = m.tails.encode();
    m.tails_slot
        .write(&p, &bytes[..m.tails.encoded_len()])
        .unwrap();
    write_gen(&p, &m.layout, 10, 2).unwrap();
    assert_eq!(read_gen(&p, &m.layout, 10).unwrap(), 2);
    let again = open(&p, &origin()).unwrap();
    assert_eq!(
        (again.info, again.info_slot.slot(), again.info_slot.seq()),
        (info, Slot::One, 2)
    );
    assert_eq!((again.tails, again.tails_slot.seq()), (m.tails, 2));
    assert_eq!(again.gens[10], 2);
    assert_eq!(
        write_gen(&p, &m.layout, 11, 2).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        write_gen(&p, &m.layout, 1, 0).unwrap_err().errno(),
        libc::EINVAL
    );
}

#[test]
fn format_then_open_on_the_crash_double() {
    let p = CrashPmem::new(SMALL as usize);
    let prm = params(4);
    format(&p, &prm).unwrap();
    assert_eq!(p.pending_words(), 0, "format leaves nothing in flight");
    // What survives a power cut right after format is the whole format.
    let after = CrashPmem::from_image(p.crash_image_none());
    check_fresh(&open(&after, &origin()).unwrap(), &prm, SMALL);
}

#[test]
fn reformat_replaces_everything() {
    let p = PmemFile::anonymous(SMALL).unwrap();
    format(&p, &params(2)).unwrap();
    let mut m = open(&p, &origin()).unwrap();
    m.info_slot
        .write(
            &p,
            &CacheInfo {
                gc_percent: 5,
                ..m.info
            }
            .encode(),
        )
        .unwrap();
    write_gen(&p, &m.layout, 3, 7).unwrap();
    let other = OriginId {
        blocks: 99,
        ..origin()
    };
    let prm = FormatParams {
        origin: other,
        format_id: 77,
        ..params(3)
    };
    format(&p, &prm).unwrap();
    check_fresh(&open(&p, &other).unwrap(), &prm, SMALL);
}

#[test]
fn format_refuses_bad_parameters() {
    let p = PmemFile::anonymous(SMALL).unwrap();
    let bad = [
        (
            FormatParams {
                lanes: 0,
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                lanes: 65,
                ..params(1)
            },
            libc::EINVAL,
        ),
        (params(5), libc::ENOSPC), // 5 lanes need 10 segments
        (
            FormatParams {
                cache_uuid: Uuid::nil(),
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                format_id: 0,
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                segment_size: 3 << 20,
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                segment_size: 2 << 20,
                ..params(1)
            },
            libc::ENOSPC,
        ),
        (
            FormatParams {
                origin: OriginId {
                    blocks: 0,
                    ..origin()
                },
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                origin: OriginId {
                    block_size: 520,
                    ..origin()
                },
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                origin: OriginId {
                    blocks: u64::MAX,
                    ..origin()
                },
                ..params(1)
            },
            libc::EINVAL,
        ),
        (
            FormatParams {
                info: CacheInfo {
                    gc_percent: 91,
                    ..CacheInfo::default()
                },
                ..params(1)
            },
            libc::EINVAL,
        ),
    ];
    for (prm, errno) in bad {
        let e = format(&p, &prm).unwrap_err();
        assert_eq!(e.errno(), errno, "{prm:?}: {e}");
    }
    assert!(
        matches!(open(&p, &origin()), Err(FormatError::NotFormatted)),
        "nothing was written"
    );
    assert!(format(&p, &params(4)).is_ok());
    let fresh = FormatParams::new(Uuid::new_v4(), origin(), 1);
    assert!(fresh.format_id != 0 && fresh.format_time > 1_600_000_000);
    assert_eq!(fresh.segment_size, DEFAULT_SEGMENT_SIZE);
}

#[test]
fn unformatted_devices() {
    let e = open(&CrashPmem::new(SMALL as usize), &origin()).unwrap_err();
    assert!(matches!(e, FormatError::NotFormatted));
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(matches!(
        open(&CrashPmem::new(100), &origin()),
        Err(FormatError::NotFormatted)
    ));
    let junk: Vec<u8> = (0..SMALL as usize).map(|i| (i * 31 % 251) as u8).collect();
    assert!(matches!(
        open(&CrashPmem::from_image(junk), &origin()),
        Err(FormatError::NotFormatted)
    ));
}

#[test]
fn origin_mismatch_names_both_identities() {
    let p = PmemFile::anonymous(SMALL).unwrap();
    format(&p, &params(1)).unwrap();
    for given in [
        OriginId {
            uuid: Uuid::from_u128(1),
            ..origin()
        },
        OriginId {
            blocks: origin().blocks + 1,
            ..origin()
        },
        OriginId {
            block_size: 4096,
            ..origin()
        },
    ] {
        let e = open(&p, &given).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let FormatError::OriginMismatch { on_media, given: g } = &e else {
            panic!("{e}")
        };
        assert_eq!((*on_media, *g), (origin(), given));
        let msg = e.to_string();
        assert!(
            msg.contains(&origin().to_string()) && msg.contains(&given.to_string()),
            "{msg}"
        );
    }
}

/// Formatted device, then `edit` applied to a copy of its persisted image.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Result<OpenedMeta, FormatError> {
    let p = CrashPmem::new(SMALL as usize);
    format(&p, &params(2)).unwrap();
    let mut img = p.crash_image_none();
    edit(&mut img);
    open(&CrashPmem::from_image(img), &origin())
}

#[test]
fn open_refuses_damaged_or_foreign_superblocks() {
    let e = edited(|b| b[100] ^= 1).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        e.to_string().contains("superblock") && e.to_string().contains("crc"),
        "{e}"
    );

    let e = edited(|b| b[8] = 2).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTSUP);
    assert!(e.to_string().contains("major version 2"), "{e}");

    let e = edited(|b| {
        b[16] = 0x05;
        reseal(&mut b[..4096], 12);
    })
    .unwrap_err();
    assert!(matches!(e, FormatError::UnknownIncompat { bits: 5 }), "{e}");
    assert!(e.to_string().contains("0x5"), "{e}");
    assert_eq!(e.errno(), libc::ENOTSUP);

    let m = edited(|b| {
        b[24] = 0x10;
        b[32] = 0x20;
        reseal(&mut b[..4096], 12);
    })
    .unwrap();
    assert!(m.read_only && m.superblock.read_only());

    // Reserved bytes: corruption at minor 0, ignored at a later minor version.
    let e = edited(|b| {
        b[2000] = 1;
        reseal(&mut b[..4096], 12);
    })
    .unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    let m = edited(|b| {
        b[10] = 1;
        b[2000] = 1;
        b[93] = 1;
        reseal(&mut b[..4096], 12);
    })
    .unwrap();
    assert_eq!(m.superblock.minor_version, 1);

    // Geometry that does not follow from the segment count.
    let e = edited(|b| {
        b[96..104].copy_from_slice(&131072u64.to_le_bytes());
        reseal(&mut b[..4096], 12);
    })
    .unwrap_err();
    assert!(e.to_string().contains("segment base"), "{e}");
}

#[test]
fn open_refuses_a_device_smaller_than_its_format() {
    let p = CrashPmem::new(SMALL as usize);
    format(&p, &params(2)).unwrap();
    let mut img = p.crash_image_none();
    img.truncate(SMALL as usize - 4096);
    let e = open(&CrashPmem::from_image(img), &origin()).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("smaller than its format"), "{e}");
    // A device that grew keeps its formatted geometry.
    let mut img = p.crash_image_none();
    img.resize(SMALL as usize + 5 * MIB as usize, 0);
    let m = open(&CrashPmem::from_image(img), &origin()).unwrap();
    assert_eq!(m.layout.segment_count(), 8);
}

#[test]
fn open_refuses_damaged_metadata() {
    // Both info copies gone.
    let e = edited(|b| b[4096..12288].fill(0)).unwrap_err();
    assert!(
        e.to_string().contains("cache info") && e.to_string().contains("no valid copy"),
        "{e}"
    );
    // The only tails copy damaged.
    let e = edited(|b| b[12288 + 40] ^= 1).unwrap_err();
    assert!(e.to_string().contains("tails"), "{e}");
    // A tail position outside the device, under a valid crc.
    let e = edited(|b| {
        b[12288 + 32..12288 + 36].copy_from_slice(&8u32.to_le_bytes());
        reseal(&mut b[12288..16384], 8);
    })
    .unwrap_err();
    assert!(e.to_string().contains("lane 0 key tail 8:0"), "{e}");
    // A generation table entry.
    let e = edited(|b| b[20480 + 8 * 5] ^= 1).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        e.to_string().contains("generation table") && e.to_string().contains("segment 5"),
        "{e}"
    );
}
