//! Property tests of every decoder: valid structures round-trip; arbitrary bytes and
//! single-byte mutations of valid encodings (with the crc left alone or resealed) never
//! panic, and whatever a decoder accepts re-encodes to exactly the bytes it was given.

use std::sync::OnceLock;

use cache::format::*;
use pmem::{CrashPmem, Pmem};
use proptest::prelude::*;
use uuid::Uuid;

/// 512 cases unless PROPTEST_CASES says otherwise.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 512;
    }
    c
}

fn reseal(b: &mut [u8], off: usize) {
    b[off..off + 4].fill(0);
    let crc = crc32c::crc32c(b);
    b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
}

/// `segment_base` straight from the spec's words, independent of the crate.
fn spec_base(count: u32) -> u64 {
    let table = (8 * u64::from(count)).div_ceil(4096) * 4096;
    (20480 + table).div_ceil(65536) * 65536
}

fn origin_id() -> impl Strategy<Value = OriginId> {
    (any::<u128>(), 0u32..4).prop_flat_map(|(u, shift)| {
        let bs = 512u32 << shift;
        (1..=u64::MAX / u64::from(bs)).prop_map(move |blocks| OriginId {
            uuid: Uuid::from_u128(u),
            blocks,
            block_size: bs,
        })
    })
}

prop_compose! {
    fn superblock()(
        minor_version in prop_oneof![4 => Just(0u16), 1 => any::<u16>()],
        ro_compat in any::<u64>(),
        compat in any::<u64>(),
        cache in 1..=u128::MAX,
        origin in origin_id(),
        seg_shift in 20u32..=30,
        segment_count in 8..=u32::MAX,
        format_time in any::<u64>(),
        format_id in 1..=u64::MAX,
    ) -> Superblock {
        Superblock {
            minor_version, incompat: 0, ro_compat, compat,
            cache_uuid: Uuid::from_u128(cache),
            origin,
            segment_size: 1 << seg_shift,
            segment_count,
            segment_base: spec_base(segment_count),
            format_time, format_id,
        }
    }
}

fn mode() -> impl Strategy<Value = CacheMode> {
    prop_oneof![
        Just(CacheMode::WriteBack),
        Just(CacheMode::WriteThrough),
        Just(CacheMode::WriteAround),
        Just(CacheMode::PassThrough)
    ]
}

prop_compose! {
    fn cache_info()(
        mode in mode(),
        flags in 0u32..8,
        gc_percent in 0u32..=90,
        promotion in any::<u32>(),
        seq_cutoff in any::<u64>(),
        writeback_target in 0u64..=10_000,
        writeback_rate in any::<u64>(),
    ) -> CacheInfo {
        CacheInfo { mode, flags, gc_percent, promotion, seq_cutoff, writeback_target, writeback_rate }
    }
}

fn log_pos() -> impl Strategy<Value = LogPos> {
    (any::<u32>(), 0..=u32::MAX / 64).prop_map(|(seg, o)| LogPos { seg, off: o * 64 })
}

fn tails() -> impl Strategy<Value = Tails> {
    (
        any::<u64>(),
        prop::collection::vec((log_pos(), log_pos()), 1..=64),
    )
        .prop_map(|(wb, lanes)| {
            let lanes: Vec<LaneTails> = lanes
                .into_iter()
                .map(|(k, d)| LaneTails {
                    key_tail: k,
                    dirty_tail: d,
                })
                .collect();
            Tails::new(wb, &lanes).unwrap()
        })
}

fn key() -> impl Strategy<Value = Key> {
    let data = (
        1..=u64::MAX,
        any::<u64>(),
        1..=u32::MAX,
        any::<u32>(),
        any::<u32>(),
        1..=u32::MAX,
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(seq, off, len, data_off, data_seg, data_gen, data_crc, dirty)| Key {
                seq,
                origin_off: off.min(u64::MAX - u64::from(len)),
                len,
                data_off,
                data_seg,
                data_gen,
                data_crc,
                flags: if dirty { Key::DIRTY } else { 0 },
            },
        );
    let unmap = (1..=u64::MAX, any::<u64>(), 1..=u32::MAX, any::<bool>()).prop_map(
        |(seq, off, len, dirty)| Key {
            seq,
            origin_off: off.min(u64::MAX - u64::from(len)),
            len,
            flags: Key::UNMAP | if dirty { Key::DIRTY } else { 0 },
            ..Key::default()
        },
    );
    prop_oneof![4 => data, 1 => unmap]
}

prop_compose! {
    fn kset_id()(format_id in 1..=u64::MAX, lane in 0u32..64, lane_seq in 1..=u64::MAX, seg_gen in 1..=u32::MAX) -> KsetId {
        KsetId { format_id, lane, lane_seq, seg_gen }
    }
}

/// A valid key-set: keys, or a LAST link.
#[derive(Clone, Debug)]
enum Kset {
    Keys(Vec<Key>),
    Last(u32, u32),
}

fn kset() -> impl Strategy<Value = (KsetId, Kset)> {
    let body = prop_oneof![
        4 => prop::collection::vec(key(), 1..=100).prop_map(Kset::Keys),
        1 => (any::<u32>(), 1..=u32::MAX).prop_map(|(s, g)| Kset::Last(s, g)),
    ];
    (kset_id(), body)
}

fn encode(id: KsetId, k: &Kset, out: &mut [u8]) -> usize {
    match k {
        Kset::Keys(keys) => encode_kset(id, keys, out).unwrap(),
        Kset::Last(s, g) => encode_kset_last(id, *s, *g, out).unwrap(),
    }
}

/// Re-encode a decoded key-set the way its writer would have.
fn reencode(id: KsetId, v: &KeySetView<'_>) -> Vec<u8> {
    let mut out = vec![0u8; MAX_KSET_SIZE];
    let n = match v.next_segment() {
        Some((s, g)) => encode_kset_last(id, s, g, &mut out).unwrap(),
        None => encode_kset(id, &v.keys().collect::<Vec<_>>(), &mut out).unwrap(),
    };
    out.truncate(n);
    out
}

/// `bytes` with byte `at` (taken modulo the length) XORed with a nonzero `x`.
fn mutate(bytes: &[u8], at: usize, x: u8) -> Vec<u8> {
    let mut m = bytes.to_vec();
    let i = at % m.len();
    m[i] ^= x;
    m
}

fn check_superblock(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(sb) = Superblock::decode(bytes) {
        // A later minor version's reserved bytes are not ours to reproduce.
        if sb.minor_version == VERSION_MINOR {
            prop_assert_eq!(&sb.encode()[..], bytes);
        }
    }
    Ok(())
}

fn check_info(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(i) = CacheInfo::decode(bytes) {
        prop_assert_eq!(&i.encode()[..], &bytes[..INFO_PAYLOAD_LEN]);
    }
    Ok(())
}

fn check_tails(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(t) = Tails::decode(bytes) {
        let n = t.encoded_len();
        prop_assert_eq!(&t.encode()[..n], &bytes[..n]);
    }
    Ok(())
}

fn check_key(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(k) = Key::decode(bytes) {
        prop_assert_eq!(&k.encode()[..], bytes);
    }
    Ok(())
}

fn check_header(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(h) = KeySetHeader::decode(bytes) {
        prop_assert_eq!(&h.encode()[..], bytes);
    }
    Ok(())
}

fn check_kset(bytes: &[u8], expect: KsetId) -> Result<(), TestCaseError> {
    match decode_kset(bytes, expect) {
        Ok(v) => prop_assert_eq!(&reencode(expect, &v)[..], &bytes[..v.size()]),
        Err(KsetError::Corrupt(e)) => prop_assert_eq!(e.errno(), libc::EIO),
        Err(KsetError::End(_)) => {}
    }
    Ok(())
}

/// A freshly formatted 8 MiB device image, made once.
fn formatted_device() -> &'static (OriginId, Vec<u8>) {
    static IMAGE: OnceLock<(OriginId, Vec<u8>)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let origin = OriginId {
            uuid: Uuid::from_u128(7),
            blocks: 1 << 20,
            block_size: 4096,
        };
        let p = CrashPmem::new(65536 + 8 * (1 << 20));
        let prm = FormatParams {
            segment_size: 1 << 20,
            format_id: 5,
            ..FormatParams::new(Uuid::from_u128(9), origin, 2)
        };
        format(&p, &prm).unwrap();
        (origin, p.crash_image_none())
    })
}

proptest! {
    #![proptest_config(config())]

    // ---- round trips -----------------------------------------------------------------

    #[test]
    fn superblock_round_trips(sb in superblock()) {
        prop_assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let l = Layout::with_count(u64::MAX, sb.segment_size, sb.origin.block_size, sb.segment_count).unwrap();
        prop_assert_eq!(l.segment_base(), sb.segment_base);
    }

    #[test]
    fn cache_info_round_trips(i in cache_info()) {
        prop_assert_eq!(CacheInfo::decode(&i.encode()).unwrap(), i);
    }

    #[test]
    fn tails_round_trip(t in tails()) {
        let b = t.encode();
        prop_assert_eq!(Tails::decode(&b[..t.encoded_len()]).unwrap(), t);
        // Zeros past the payload: a later minor's extension this reader ignores.
        prop_assert_eq!(Tails::decode(&b).unwrap(), t);
    }

    #[test]
    fn key_round_trips(k in key()) {
        prop_assert_eq!(Key::decode(&k.encode()).unwrap(), k);
    }

    #[test]
    fn kset_round_trips((id, k) in kset(), slack in 0usize..200) {
        let mut buf = vec![0u8; MAX_KSET_SIZE + slack];
        let n = encode(id, &k, &mut buf);
        let v = decode_kset(&buf, id).unwrap();
        prop_assert_eq!(v.size(), n);
        match &k {
            Kset::Keys(keys) => prop_assert_eq!(&v.keys().collect::<Vec<_>>(), keys),
            Kset::Last(s, g) => prop_assert_eq!(v.next_segment(), Some((*s, *g))),
        }
        let h = *v.header();
        prop_assert_eq!(KeySetHeader::decode(&buf[..64]).unwrap(), h);
        prop_assert_eq!(&reencode(id, &v)[..], &buf[..n]);
    }

    #[test]
    fn gen_entries_round_trip(seg in any::<u32>(), g in 1..=u32::MAX) {
        prop_assert_eq!(gen_entry_decode(seg, gen_entry_encode(seg, g)).unwrap(), g);
    }

    #[test]
    fn layout_is_the_largest_that_fits(size in 0u64..(1 << 44), seg_shift in 20u32..=30, bs_shift in 0u32..4) {
        let seg = 1u32 << seg_shift;
        match Layout::new(size, seg, 512 << bs_shift) {
            Ok(l) => {
                let n = l.segment_count();
                prop_assert!(n >= 8);
                prop_assert_eq!(l.segment_base(), spec_base(n));
                prop_assert!(spec_base(n) + u64::from(n) * u64::from(seg) <= size);
                prop_assert!(spec_base(n + 1) + u64::from(n + 1) * u64::from(seg) > size);
                prop_assert_eq!(l.segment_offset(n - 1).unwrap() + u64::from(seg), l.end());
            }
            Err(e) => {
                prop_assert_eq!(e.errno(), libc::ENOSPC);
                prop_assert!(spec_base(8) + 8 * u64::from(seg) > size);
            }
        }
    }

    // ---- arbitrary bytes ---------------------------------------------------------------

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..5000), expect in kset_id()) {
        check_info(&bytes)?;
        check_tails(&bytes)?;
        check_key(&bytes)?;
        check_header(&bytes)?;
        check_kset(&bytes, expect)?;
        if bytes.len() >= 40 {
            check_key(&bytes[..40])?;
            check_info(&bytes[..40])?;
        }
        if bytes.len() >= 64 {
            check_header(&bytes[..64])?;
        }
        let mut sb = bytes.clone();
        sb.resize(4096, 0);
        check_superblock(&sb)?;
    }

    /// Arbitrary field values behind a valid magic, version and crc reach every check.
    #[test]
    fn arbitrary_sealed_superblocks(fields in prop::collection::vec(any::<u8>(), 112), tail_zero in any::<bool>()) {
        let mut b = vec![0u8; 4096];
        b[..112].copy_from_slice(&fields);
        b[..8].copy_from_slice(&SB_MAGIC.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        if !tail_zero {
            b[3000] = 1;
        }
        reseal(&mut b, 12);
        check_superblock(&b)?;
    }

    #[test]
    fn arbitrary_sealed_ksets(body in prop::collection::vec(any::<u8>(), 64..4200), expect in kset_id(), own_id in any::<bool>()) {
        let mut b = body;
        b[..8].copy_from_slice(&KSET_MAGIC.to_le_bytes());
        let count = u16::from_le_bytes([b[12], b[13]]) % 128;
        b[12..14].copy_from_slice(&count.to_le_bytes());
        let expect = if own_id {
            // Make the identity match so the structural checks run.
            b[16..20].copy_from_slice(&expect.seg_gen.to_le_bytes());
            b[20..24].copy_from_slice(&expect.lane.to_le_bytes());
            b[24..32].copy_from_slice(&expect.lane_seq.to_le_bytes());
            b[40..48].copy_from_slice(&expect.format_id.to_le_bytes());
            expect
        } else {
            expect
        };
        let size = kset_size(usize::from(count));
        if size <= b.len() {
            reseal(&mut b[..size], 8);
        }
        check_kset(&b, expect)?;
    }

    #[test]
    fn arbitrary_gen_entries(seg in any::<u32>(), raw in any::<u64>()) {
        if let Ok(g) = gen_entry_decode(seg, raw) {
            prop_assert_eq!(gen_entry_encode(seg, g), raw);
        }
    }

    /// Two arbitrary (or sealed) slots: the reader never panics, and what it returns is
    /// what the slot it names holds.
    #[test]
    fn arbitrary_slot_pairs(a in prop::collection::vec(any::<u8>(), 4096), b in prop::collection::vec(any::<u8>(), 4096), seal in 0u8..4, len_a in 0u32..4200, len_b in 0u32..4200) {
        let mut slots = [a, b];
        for (i, (s, len)) in slots.iter_mut().zip([len_a, len_b]).enumerate() {
            if seal & (1 << i) != 0 {
                s[12..16].copy_from_slice(&len.to_le_bytes());
                if (len as usize) < 4080 {
                    s[16 + len as usize..].fill(0);
                }
                reseal(s, 8);
            }
        }
        let p = CrashPmem::new(3 * 4096);
        p.write(4096, &slots[0]).unwrap();
        p.write(8192, &slots[1]).unwrap();
        if let Ok((rec, slot, seq)) = read_slots(&p, 4096) {
            let s = &slots[slot.index()];
            prop_assert_eq!(u64::from_le_bytes(s[..8].try_into().unwrap()), seq);
            let len = u32::from_le_bytes(s[12..16].try_into().unwrap()) as usize;
            prop_assert_eq!(rec.payload(), &s[16..16 + len]);
        }
    }

    // ---- single-byte mutations of valid encodings ----------------------------------------

    #[test]
    fn mutated_superblocks(sb in superblock(), at in 0usize..4096, x in 1u8..=255, sealed in any::<bool>()) {
        let mut m = mutate(&sb.encode(), at, x);
        if sealed {
            reseal(&mut m, 12);
        } else {
            // Without a reseal every mutation is caught (by the magic, version or crc).
            prop_assert!(Superblock::decode(&m).is_err());
        }
        check_superblock(&m)?;
    }

    #[test]
    fn mutated_cache_info(i in cache_info(), at in 0usize..40, x in 1u8..=255) {
        check_info(&mutate(&i.encode(), at, x))?;
    }

    #[test]
    fn mutated_tails(t in tails(), at in 0usize..TAILS_PAYLOAD_MAX, x in 1u8..=255) {
        let b = t.encode();
        check_tails(&mutate(&b[..t.encoded_len()], at, x))?;
    }

    #[test]
    fn mutated_keys(k in key(), at in 0usize..40, x in 1u8..=255) {
        check_key(&mutate(&k.encode(), at, x))?;
    }

    #[test]
    fn mutated_ksets((id, k) in kset(), at in 0usize..4096, x in 1u8..=255, sealed in any::<bool>()) {
        let mut buf = vec![0u8; MAX_KSET_SIZE];
        let n = encode(id, &k, &mut buf);
        let mut m = mutate(&buf[..n], at, x);
        m.resize(MAX_KSET_SIZE, 0);
        if sealed {
            let count = usize::from(u16::from_le_bytes([m[12], m[13]]));
            let size = kset_size(count).min(m.len());
            reseal(&mut m[..size], 8);
        } else {
            // A torn write is the end of the log, never an error and never a different key-set.
            prop_assert!(matches!(decode_kset(&m, id), Err(KsetError::End(_))));
        }
        check_kset(&m, id)?;
        check_header(&m[..64])?;
    }

    #[test]
    fn mutated_slots(payload in prop::collection::vec(any::<u8>(), 0..=SLOT_PAYLOAD_MAX), at in 0usize..4096, x in 1u8..=255, sealed in any::<bool>()) {
        let p = CrashPmem::new(3 * 4096);
        let mut w = SlotWriter::new(4096, Slot::One, 0);
        w.write(&p, b"older").unwrap();
        w.write(&p, &payload).unwrap(); // slot 1, sequence 2
        let mut s = vec![0u8; 4096];
        p.read(8192, &mut s).unwrap();
        let mut m = mutate(&s, at, x);
        if sealed {
            reseal(&mut m, 8);
        }
        p.write(8192, &m).unwrap();
        match read_slots(&p, 4096) {
            Ok((rec, Slot::One, seq)) => {
                let len = u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize;
                prop_assert_eq!(seq, u64::from_le_bytes(m[..8].try_into().unwrap()));
                prop_assert_eq!(rec.payload(), &m[16..16 + len]);
            }
            // Falling back to the older copy is allowed only if the newer one is no
            // longer a record at all (its sequence is gone).
            Ok((rec, _, seq)) => {
                prop_assert_eq!((rec.payload(), seq), (&b"older"[..], 1));
                prop_assert!(u64::from_le_bytes(m[..8].try_into().unwrap()) <= 1);
            }
            Err(e) => prop_assert_eq!(e.errno(), libc::EIO),
        }
    }

    /// A formatted device with one byte of its metadata changed (and the structure it
    /// falls in resealed or not) opens or is refused; it never panics, and if it opens,
    /// everything it reports obeys the format's rules.
    #[test]
    fn mutated_formatted_devices(at in 0usize..(20480 + 4096), x in 1u8..=255, sealed in any::<bool>()) {
        let (origin, formatted) = formatted_device();
        let size = formatted.len();
        let mut img = formatted.clone();
        img[at] ^= x;
        if sealed {
            match at {
                0..4096 => reseal(&mut img[..4096], 12),
                4096..20480 => {
                    let s = at / 4096 * 4096;
                    reseal(&mut img[s..s + 4096], 8);
                }
                _ => {}
            }
        }
        if let Ok(m) = open(&CrashPmem::from_image(img), origin) {
            prop_assert!(m.layout.end() <= size as u64);
            m.tails.check_bounds(&m.layout).unwrap();
            prop_assert!(m.gens.iter().all(|&g| g >= 1));
            prop_assert_eq!(m.gens.len(), m.layout.segment_count() as usize);
        }
    }
}
