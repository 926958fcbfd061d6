//! A lane's key log under power cuts: at every fence, a crash image keeping a random subset of the
//! unpersisted words; the walk of each image must give exactly a prefix of the sealed key-sets —
//! at least every one whose seal had returned — and never fail.

use cache::format::{self, CacheInfo, FormatParams, Key, LogPos, OriginId};
use cache::log::{LaneLog, LogCtx, walk};
use cache::segments::{SegUse, SegmentTable};
use pmem::{CrashPmem, Pmem};
use rand::SeedableRng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn key(seq: u64) -> Key {
    Key {
        seq,
        origin_off: seq * 8,
        len: 8,
        data_off: 0,
        data_seg: 5,
        data_gen: 1,
        data_crc: 0,
        flags: Key::DIRTY,
    }
}

#[test]
fn every_crash_image_replays_a_prefix_of_the_sealed_key_sets() {
    let pmem = Arc::new(CrashPmem::new(10 << 20));
    let origin = OriginId {
        uuid: uuid::Uuid::new_v4(),
        blocks: 1 << 20,
        block_size: 4096,
    };
    let mut params = FormatParams::new(uuid::Uuid::new_v4(), origin, 1);
    params.segment_size = 1 << 20;
    params.info = CacheInfo::default();
    format::format(&*pmem, &params).unwrap();
    let meta = format::open(&*pmem, &origin).unwrap();
    let segments = SegmentTable::new(meta.gens.clone());
    segments.mark_used(0, SegUse::Key { lane: 0 }).unwrap();
    let ctx = LogCtx {
        pmem: &*pmem,
        layout: &meta.layout,
        segments: &segments,
        format_id: params.format_id,
    };
    let mut log = LaneLog::new(
        0,
        params.format_id,
        LogPos { seg: 0, off: 0 },
        meta.gens[0],
        1,
    );

    // Crash images at every fence, each with how many key-sets had been sealed by then.
    let sealed = Arc::new(AtomicUsize::new(0));
    // (key-sets sealed when the image was taken, the image)
    type Images = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;
    let images: Images = Arc::default();
    let (weak, s, imgs) = (Arc::downgrade(&pmem), sealed.clone(), images.clone());
    let rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(7));
    pmem.set_fence_hook(Some(Box::new(move |fence| {
        // One fence in 8 (by a fixed stride mixed with the count), to keep copying images cheap.
        if fence.wrapping_mul(0x9E37_79B9) % 8 != 0 {
            return;
        }
        if let Some(p) = weak.upgrade() {
            let img = p.crash_image(&mut *rng.lock().unwrap());
            imgs.lock().unwrap().push((s.load(Ordering::SeqCst), img));
        }
    })));

    // Key-sets of 1..=100 keys, enough to cross several 1 MiB key segments.
    let mut seq = 0u64;
    let mut expected: Vec<Vec<Key>> = Vec::new();
    for i in 0..1500usize {
        let n = 1 + (i * 37) % 100;
        let keys: Vec<Key> = (0..n)
            .map(|_| {
                seq += 1;
                key(seq)
            })
            .collect();
        for k in &keys {
            log.append(*k);
        }
        log.seal(&ctx).unwrap();
        expected.push(keys);
        sealed.fetch_add(1, Ordering::SeqCst);
    }
    pmem.set_fence_hook(None);
    assert!(
        log.head().seg > 2,
        "the log crossed segments: {:?}",
        log.head()
    );

    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() > 300, "crash points: {}", images.len());
    for (i, (done, img)) in images.iter().enumerate() {
        let cut = CrashPmem::from_image(img.clone());
        let gens = format::read_gen_table(&cut, &meta.layout).unwrap();
        let mut found: Vec<Vec<Key>> = Vec::new();
        walk(
            &cut,
            &meta.layout,
            &gens,
            params.format_id,
            0,
            LogPos { seg: 0, off: 0 },
            |f| {
                found.push(f.keys);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("image {i}: replay failed: {e}"));
        assert!(
            found.len() >= *done && found.len() <= done + 1,
            "image {i}: {} key-sets, {done} sealed",
            found.len()
        );
        assert_eq!(
            found[..],
            expected[..found.len()],
            "image {i}: not a prefix"
        );
    }
}

#[test]
fn a_damaged_key_set_with_later_ones_behind_it_is_reported() {
    let pmem = CrashPmem::new(10 << 20);
    let origin = OriginId {
        uuid: uuid::Uuid::new_v4(),
        blocks: 1 << 20,
        block_size: 4096,
    };
    let mut params = FormatParams::new(uuid::Uuid::new_v4(), origin, 1);
    params.segment_size = 1 << 20;
    format::format(&pmem, &params).unwrap();
    let meta = format::open(&pmem, &origin).unwrap();
    let segments = SegmentTable::new(meta.gens.clone());
    segments.mark_used(0, SegUse::Key { lane: 0 }).unwrap();
    let ctx = LogCtx {
        pmem: &pmem,
        layout: &meta.layout,
        segments: &segments,
        format_id: params.format_id,
    };
    let mut log = LaneLog::new(
        0,
        params.format_id,
        LogPos { seg: 0, off: 0 },
        meta.gens[0],
        1,
    );
    for s in 1..=10 {
        log.append(key(s));
        log.seal(&ctx).unwrap();
    }
    // Flip one byte inside the fourth key-set (each 1-key set is 128 bytes).
    let at = meta.layout.segment_offset(0).unwrap() + 3 * 128 + 70;
    let mut b = [0u8; 1];
    pmem.read(at, &mut b).unwrap();
    pmem.write(at, &[b[0] ^ 0x40]).unwrap();
    let err = walk(
        &pmem,
        &meta.layout,
        &meta.gens,
        params.format_id,
        0,
        LogPos { seg: 0, off: 0 },
        |_| Ok(()),
    )
    .map(|_| ())
    .expect_err("a damaged key-set in the middle is not the end of the log");
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// GC's cut request: the first key at or above it seals the keys below it into their own
/// key-set, and the lane's published open bound stays at that key until it is sealed too.
#[test]
fn a_key_at_the_cut_request_seals_the_keys_below_it_first() {
    let pmem = Arc::new(CrashPmem::new(10 << 20));
    let origin = OriginId {
        uuid: uuid::Uuid::new_v4(),
        blocks: 1 << 20,
        block_size: 4096,
    };
    let mut params = FormatParams::new(uuid::Uuid::new_v4(), origin, 1);
    params.segment_size = 1 << 20;
    format::format(&*pmem, &params).unwrap();
    let meta = format::open(&*pmem, &origin).unwrap();
    let segments = SegmentTable::new(meta.gens.clone());
    segments.mark_used(0, SegUse::Key { lane: 0 }).unwrap();
    let ctx = LogCtx {
        pmem: &*pmem,
        layout: &meta.layout,
        segments: &segments,
        format_id: params.format_id,
    };
    let start = LogPos { seg: 0, off: 0 };
    let mut log = LaneLog::new(0, params.format_id, start, meta.gens[0], 1);
    // Keys 3, 5, 7 (other lanes took the seqs between); the cut request is 6.
    for seq in [3, 5] {
        log.shared().open_from(seq);
        log.append_at_cut(&ctx, key(seq), 6).unwrap();
    }
    assert_eq!(log.head(), start, "nothing at or above the cut yet");
    log.append_at_cut(&ctx, key(7), 6).unwrap();
    assert_ne!(log.head(), start, "3 and 5 were sealed before 7 went in");
    assert_eq!(log.shared().persisted_head(), log.head());
    assert_eq!(
        log.open_keys().iter().map(|k| k.seq).collect::<Vec<_>>(),
        [7]
    );
    assert_eq!(log.shared().min_open_seq(), Some(7));
    // No request (0) or a request below the open keys: no early seal.
    log.append_at_cut(&ctx, key(9), 0).unwrap();
    log.append_at_cut(&ctx, key(11), 6).unwrap();
    assert_eq!(log.open_keys().len(), 3);
    log.seal(&ctx).unwrap();
    assert_eq!(log.shared().min_open_seq(), None);
    let mut sets = Vec::new();
    walk(
        &*pmem,
        &meta.layout,
        &meta.gens,
        params.format_id,
        0,
        start,
        |f| {
            sets.push(f.keys.iter().map(|k| k.seq).collect::<Vec<_>>());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(sets, [vec![3, 5], vec![7, 9, 11]]);
}
