//! Power cuts against the crash-simulating pmem double: during dual-slot writes the reader
//! always finds the previous or the new record, and during a (re)format the device opens
//! as the old format, as unformatted, or as the new format, never anything in between.

use std::sync::Mutex;

use cache::format::*;
use pmem::{CrashPmem, Pmem, PmemError, PmemKind};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 512;
    }
    c
}

/// Which power cuts to simulate at each crash point.
const RANDOM_IMAGES: usize = 4;

/// A [`CrashPmem`] that simulates power cuts after every store and before every flush and
/// fence, handing each crash image (and how many fences had completed) to `check`.
struct Tap<F: Fn(Vec<u8>, u64) + Send + Sync> {
    inner: CrashPmem,
    rng: Mutex<StdRng>,
    check: F,
}

impl<F: Fn(Vec<u8>, u64) + Send + Sync> Tap<F> {
    fn new(inner: CrashPmem, seed: u64, check: F) -> Self {
        Self {
            inner,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            check,
        }
    }

    fn cut(&self) {
        let p = &self.inner;
        let fences = p.fence_count();
        (self.check)(p.crash_image_none(), fences);
        (self.check)(p.crash_image_all(), fences);
        (self.check)(p.crash_image_with(|w| w % 2 == 0), fences);
        (self.check)(p.crash_image_with(|w| w % 2 == 1), fences);
        let mut rng = self.rng.lock().unwrap();
        for _ in 0..RANDOM_IMAGES {
            (self.check)(p.crash_image(&mut *rng), fences);
        }
    }
}

impl<F: Fn(Vec<u8>, u64) + Send + Sync> Pmem for Tap<F> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn kind(&self) -> PmemKind {
        self.inner.kind()
    }
    fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        self.inner.write(off, src)?;
        self.cut();
        Ok(())
    }
    fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        self.inner.write_nt(off, src)?;
        self.cut();
        Ok(())
    }
    fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError> {
        self.inner.read(off, dst)
    }
    fn flush(&self, off: u64, len: u64) -> Result<(), PmemError> {
        self.cut();
        self.inner.flush(off, len)
    }
    fn fence(&self) {
        self.cut();
        self.inner.fence();
    }
    fn sync(&self) -> Result<(), PmemError> {
        self.inner.sync()
    }
    fn as_ptr(&self) -> Option<*mut u8> {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Dual slots.

const BASE: u64 = 4096;
const DEV: usize = 4 * 4096;

/// What the reader may find at a crash point: the record whose write last returned, or the
/// one being written.
struct Expect {
    prev: Option<(u64, Vec<u8>)>,
    next: (u64, Vec<u8>),
}

fn check_slot_image(img: Vec<u8>, e: &Expect) {
    let p = CrashPmem::from_image(img);
    match read_slots(&p, BASE) {
        Ok((rec, _, seq)) => {
            let got = (seq, rec.payload().to_vec());
            assert!(
                Some(&got) == e.prev.as_ref() || got == e.next,
                "found sequence {seq}, expected {:?} or {}",
                e.prev.as_ref().map(|p| p.0),
                e.next.0
            );
        }
        // Before the very first record exists there is nothing to find.
        Err(err) => assert!(
            e.prev.is_none(),
            "reader failed after a write returned: {err}"
        ),
    }
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..=SLOT_PAYLOAD_MAX),
        // Payloads of one repeated byte keep most words unchanged between records.
        (any::<u8>(), 0..=SLOT_PAYLOAD_MAX).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A sequence of dual-slot writes with a simulated power cut after every store and
    /// before every flush and fence: the reader always finds the previous or the new record
    /// (never garbage, never an error once a write has returned, never anything older than
    /// the last record whose write returned).
    #[test]
    fn dual_slot_writes_survive_power_cuts(payloads in prop::collection::vec(payload(), 1..8), seed: u64) {
        let expect = Mutex::new(Expect { prev: None, next: (0, vec![]) });
        let tap = Tap::new(CrashPmem::new(DEV), seed, |img, _| check_slot_image(img, &expect.lock().unwrap()));
        let mut w = SlotWriter::new(BASE, Slot::One, 0);
        for (i, p) in payloads.iter().enumerate() {
            expect.lock().unwrap().next = (i as u64 + 1, p.clone());
            let seq = w.write(&tap, p).unwrap();
            prop_assert_eq!(seq, i as u64 + 1);
            // The write returned: from now on only this record may be found.
            let mut e = expect.lock().unwrap();
            e.prev = Some((seq, p.clone()));
            e.next = (seq, p.clone());
            drop(e);
            tap.cut();
            prop_assert_eq!(tap.inner.pending_words(), 0);
        }
    }

    /// The same after a power cut mid-write: restart from a crash image, reopen the slots,
    /// and keep writing; the torn slot is simply written again.
    #[test]
    fn dual_slot_writes_resume_after_a_power_cut(payloads in prop::collection::vec(payload(), 2..6), cut_at in any::<prop::sample::Index>(), seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = CrashPmem::new(DEV);
        let mut w = SlotWriter::new(BASE, Slot::One, 0);
        w.write(&p, &payloads[0]).unwrap();
        // Interrupt the second write at a random fence.
        let fences = p.fence_count();
        let stop = fences + 1 + cut_at.index(2) as u64;
        let images = Mutex::new(Vec::new());
        let tap = Tap::new(p, seed, |img, f| {
            if f + 1 == stop {
                images.lock().unwrap().push(img);
            }
        });
        w.write(&tap, &payloads[1]).unwrap();
        let mut images = std::mem::take(&mut *images.lock().unwrap());
        prop_assert!(!images.is_empty());
        let pick = rng.random_range(0..images.len());
        let p = CrashPmem::from_image(images.swap_remove(pick));
        let (rec, slot, seq) = read_slots(&p, BASE).unwrap();
        prop_assert!(seq == 1 || seq == 2);
        prop_assert_eq!(rec.payload(), &payloads[seq as usize - 1][..]);
        let mut w = SlotWriter::new(BASE, slot, seq);
        for q in &payloads[2..] {
            let s = w.write(&p, q).unwrap();
            let (rec, _, got) = read_slots(&CrashPmem::from_image(p.crash_image(&mut rng)), BASE).unwrap();
            prop_assert_eq!((got, rec.payload()), (s, &q[..]));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Format.

const SIZE: usize = 65536 + 8 * (1 << 20);

fn origin(n: u128) -> OriginId {
    OriginId {
        uuid: Uuid::from_u128(n),
        blocks: 1 << 20,
        block_size: 4096,
    }
}

fn params(n: u128, lanes: u32) -> FormatParams {
    FormatParams {
        segment_size: 1 << 20,
        format_id: 1000 + n as u64,
        ..FormatParams::new(Uuid::from_u128(n), origin(n), lanes)
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Old,
    Unformatted,
    New,
}

/// Classify a crash image taken while formatting `new` over `old` (if any).
fn classify(img: Vec<u8>, old: Option<&OpenedMeta>, new: &FormatParams) -> Seen {
    let p = CrashPmem::from_image(img);
    let matches = |m: &OpenedMeta, want: &OpenedMeta| {
        m.superblock == want.superblock
            && m.info == want.info
            && m.tails == want.tails
            && m.gens == want.gens
    };
    match open(&p, &new.origin) {
        Ok(m) => {
            assert_eq!(m.superblock.format_id, new.format_id);
            assert_eq!(
                (m.info, m.tails.lanes().len()),
                (new.info, new.lanes as usize)
            );
            assert!(m.gens.iter().all(|&g| g == GEN_FIRST));
            Seen::New
        }
        Err(FormatError::NotFormatted) => Seen::Unformatted,
        Err(FormatError::OriginMismatch { .. }) => {
            let old = old.expect("only the old format has another origin");
            let m = open(&p, &old.superblock.origin).expect("the old format opens whole");
            assert!(matches(&m, old), "old format changed: {m:?}");
            Seen::Old
        }
        Err(e) => panic!("a format cut short must not look corrupt: {e}"),
    }
}

fn format_under_power_cuts(old: Option<(&CrashPmem, OpenedMeta)>, new: &FormatParams, seed: u64) {
    let (device, old_meta) = match old {
        Some((p, m)) => (CrashPmem::from_image(p.crash_image_none()), Some(m)),
        None => (CrashPmem::new(SIZE), None),
    };
    let seen = Mutex::new(Vec::new());
    let tap = Tap::new(device, seed, |img, fences| {
        let s = classify(img, old_meta.as_ref(), new);
        seen.lock().unwrap().push((fences, s));
    });
    format(&tap, new).unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Three fences: the old magic cleared, the new metadata durable, the new magic durable.
    assert_eq!(tap.inner.fence_count(), 3);
    for (fences, s) in &seen {
        match fences {
            0 => assert!(
                *s == Seen::Unformatted || (old_meta.is_some() && *s == Seen::Old),
                "{s:?} before any fence"
            ),
            1 => assert_eq!(*s, Seen::Unformatted, "between the fences"),
            _ => assert!(
                *s == Seen::Unformatted || *s == Seen::New,
                "{s:?} while writing the magic"
            ),
        }
    }
    assert!(
        seen.iter().any(|(_, s)| *s == Seen::New),
        "some cut keeps the new magic"
    );
    assert_eq!(
        classify(tap.inner.crash_image_none(), old_meta.as_ref(), new),
        Seen::New
    );
}

#[test]
fn format_cut_short_opens_as_unformatted() {
    for seed in 0..4 {
        format_under_power_cuts(None, &params(1, 2), seed);
    }
}

#[test]
fn reformat_cut_short_is_old_unformatted_or_new() {
    for seed in 0..4 {
        let old = CrashPmem::new(SIZE);
        let prm = FormatParams {
            info: CacheInfo {
                gc_percent: 33,
                ..CacheInfo::default()
            },
            ..params(1, 4)
        };
        format(&old, &prm).unwrap();
        // Make the old format lived-in: newer records in slot 1, a bumped generation.
        let mut m = open(&old, &prm.origin).unwrap();
        m.info = CacheInfo {
            gc_percent: 44,
            ..m.info
        };
        m.info_slot.write(&old, &m.info.encode()).unwrap();
        write_gen(&old, &m.layout, 6, 3).unwrap();
        let m = open(&old, &prm.origin).unwrap();
        assert_eq!((m.info.gc_percent, m.gens[6]), (44, 3));
        format_under_power_cuts(Some((&old, m)), &params(2, 1), seed);
    }
}

/// A key-set written under an earlier format of the same device, even with identical
/// lane, sequence and generation, is not taken for one of the current format.
#[test]
fn key_sets_of_an_earlier_format_end_the_log() {
    let p = CrashPmem::new(SIZE);
    let first = params(1, 1);
    format(&p, &first).unwrap();
    let m = open(&p, &first.origin).unwrap();
    let key = Key {
        seq: 1,
        origin_off: 0,
        len: 1,
        data_off: 0,
        data_seg: 5,
        data_gen: 1,
        data_crc: 0,
        flags: Key::DIRTY,
    };
    let id = KsetId {
        format_id: m.superblock.format_id,
        lane: 0,
        lane_seq: 1,
        seg_gen: m.gens[0],
    };
    let mut buf = [0u8; MAX_KSET_SIZE];
    let n = encode_kset(id, &[key], &mut buf).unwrap();
    let at = m.layout.segment_offset(0).unwrap();
    p.write_nt(at, &buf[..n]).unwrap();
    p.fence();

    // Same cache UUID and origin, same lane layout: only the format id differs.
    let second = FormatParams {
        format_id: first.format_id + 1,
        ..first
    };
    format(&p, &second).unwrap();
    let m2 = open(&p, &second.origin).unwrap();
    let mut bytes = [0u8; MAX_KSET_SIZE];
    p.read(at, &mut bytes).unwrap();
    let expect = KsetId {
        format_id: m2.superblock.format_id,
        lane: 0,
        lane_seq: 1,
        seg_gen: m2.gens[0],
    };
    assert!(matches!(
        decode_kset(&bytes, expect),
        Err(KsetError::End(KsetEnd::OtherFormat { .. }))
    ));
}
