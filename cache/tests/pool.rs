//! Running out of bdev_io is never an I/O error in the cache. Under the deterministic harness, with
//! a tiny pool, an origin that holds every I/O until the test releases it (one at a time) and
//! the origin's channel filled until it refuses: read misses, partial hits, writethrough
//! writes, FLUSH and writeback all wait for a free bdev_io on the origin's channel and resume,
//! with no failed I/O, and a queue far deeper than the pool completes. Every test here sets the
//! same tiny pool (the bdev options are process-wide and read when a channel is made).

mod common;
use common::{iov, record, take_done, unregister};

use bdev::{
    Bdev, BdevChannel, BdevChannelOps, BdevDesc, BdevError, BdevIo, BdevOps, BdevProps, DmaBuf,
    IoCtx, IoFlags, IoType, IoVec,
};
use cache::instance::Cache;
use cache::params::CreateParams;
use pmem::{Pmem, PmemFile};
use poller::Harness;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

const BS: usize = 4096;
const ORIGIN_BLOCKS: u64 = 1024;
/// bdev_io per thread (or per channel): small, so the tests reach the end of it quickly.
const POOL: u32 = 16;
/// The `IoCtx::Word` of the I/Os that fill the origin's channel.
const FILLER: usize = 1 << 20;

fn tiny_pool() {
    bdev::set_options(bdev::BdevOptions {
        bdev_io_cache_size: POOL,
        ..bdev::BdevOptions::default()
    })
    .unwrap();
}

/// Block `lba`'s content on the origin before any write: its number, then a fill byte.
fn origin_block(lba: u64) -> Vec<u8> {
    let mut b = vec![(lba % 251) as u8; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn written_block(lba: u64, tag: u8) -> Vec<u8> {
    let mut b = vec![tag; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn buf_of(blocks: impl IntoIterator<Item = Vec<u8>>) -> DmaBuf {
    let blocks: Vec<Vec<u8>> = blocks.into_iter().collect();
    let mut b = DmaBuf::new(blocks.len() * BS, 4096).unwrap();
    for (dst, src) in b.as_mut_slice().chunks_mut(BS).zip(&blocks) {
        dst.copy_from_slice(src);
    }
    b
}

// ------------------------------------------------------------------- the gated origin

thread_local! {
    /// Closed: the origin parks every I/O until `release_one` (each test runs on its own OS
    /// thread, and the harness runs every lightweight thread on it).
    static CLOSED: Cell<bool> = const { Cell::new(false) };
    static PARKED: RefCell<VecDeque<(Arc<Gate>, BdevIo)>> = const { RefCell::new(VecDeque::new()) };
}

/// A RAM disk with a FLUSH that does nothing but count.
struct Gate {
    image: Mutex<Vec<u8>>,
    flushes: Mutex<u64>,
}

impl Gate {
    fn new() -> Arc<Gate> {
        let image = (0..ORIGIN_BLOCKS).flat_map(origin_block).collect();
        Arc::new(Gate {
            image: Mutex::new(image),
            flushes: Mutex::new(0),
        })
    }

    fn execute(&self, io: BdevIo) {
        let (lba, n) = (io.offset_blocks() as usize, io.num_blocks() as usize);
        let r = lba * BS..(lba + n) * BS;
        let mut img = self.image.lock().unwrap();
        match io.io_type() {
            IoType::Read => {
                bdev::iov::copy_to_iovs(io.iovs(), &img[r]);
            }
            IoType::Write => {
                bdev::iov::copy_from_iovs(io.iovs(), &mut img[r]);
            }
            IoType::Unmap | IoType::WriteZeroes => img[r].fill(0),
            IoType::Flush => *self.flushes.lock().unwrap() += 1,
            IoType::Reset => {}
        }
        drop(img);
        io.complete_ok();
    }

    fn block(&self, lba: u64) -> Vec<u8> {
        let r = lba as usize * BS..(lba as usize + 1) * BS;
        self.image.lock().unwrap()[r].to_vec()
    }

    fn flushes(&self) -> u64 {
        *self.flushes.lock().unwrap()
    }
}

struct GateOps(Arc<Gate>);

impl BdevOps for GateOps {
    fn io_type_supported(&self, _: IoType) -> bool {
        true
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        Ok(Rc::new(GateChannel(self.0.clone())))
    }
}

struct GateChannel(Arc<Gate>);

impl BdevChannelOps for GateChannel {
    fn submit_request(&self, io: BdevIo) {
        if CLOSED.with(Cell::get) {
            PARKED.with(|p| p.borrow_mut().push_back((self.0.clone(), io)));
        } else {
            self.0.execute(io);
        }
    }
}

/// Completes the oldest parked I/O; false when none is parked.
fn release_one() -> bool {
    match PARKED.with(|p| p.borrow_mut().pop_front()) {
        Some((gate, io)) => {
            gate.execute(io);
            true
        }
        None => false,
    }
}

fn parked() -> usize {
    PARKED.with(|p| p.borrow().len())
}

// ------------------------------------------------------------------- submitting

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// A test I/O, kept while it waits for a bdev_io of the cache's channel (a submitter that is
/// refused waits too: with one pool per thread, the origin's fill took the cache's I/Os).
#[derive(Clone)]
struct Op {
    ch: BdevChannel,
    kind: Kind,
    lba: u64,
    blocks: u64,
    buf: IoVec,
    tag: usize,
}

thread_local! {
    static WAITING: RefCell<Vec<Option<Op>>> = const { RefCell::new(Vec::new()) };
}

fn submit(op: Op) {
    let r = match op.kind {
        Kind::Read => op
            .ch
            .read(&[op.buf], op.lba, op.blocks, record, IoCtx::Word(op.tag)),
        Kind::Write => op.ch.write(
            &[op.buf],
            op.lba,
            op.blocks,
            IoFlags::default(),
            record,
            IoCtx::Word(op.tag),
        ),
        Kind::Flush => op
            .ch
            .flush(0, op.ch.num_blocks(), record, IoCtx::Word(op.tag)),
    };
    if let Err(e) = r {
        assert_eq!(e.error, BdevError::NoMemory, "only a full pool refuses");
        let ch = op.ch.clone();
        let slot = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            w.push(Some(op));
            w.len() - 1
        });
        ch.queue_io_wait(resubmit, IoCtx::Word(slot));
    }
}

fn resubmit(ctx: IoCtx) {
    let IoCtx::Word(slot) = ctx else { return };
    if let Some(op) = WAITING.with(|w| w.borrow_mut()[slot].take()) {
        submit(op);
    }
}

// ------------------------------------------------------------------- the environment

struct Env {
    h: Harness,
    gate: Arc<Gate>,
    pc: Option<Bdev>,
    cache: Arc<Cache>,
    desc: Option<(BdevDesc, BdevChannel)>,
    origin: Option<(BdevDesc, BdevChannel)>,
    scratch: DmaBuf,
    others: Vec<Bdev>,
}

fn env(prefix: &str, mode: &str) -> Env {
    tiny_pool();
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(32 << 20).unwrap());
    let pmem_name = format!("{prefix}_pmem");
    let pmem_bdev = bdev::pmem::create_with(&pmem_name, pm, 4096).unwrap();
    let gate = Gate::new();
    let origin = format!("{prefix}_origin");
    let mut props = BdevProps::new(&origin, "gate", "Gated RAM disk", BS as u32, ORIGIN_BLOCKS);
    props.uuid = Some(uuid::Uuid::new_v4());
    props.write_cache = true;
    let ob = Bdev::register(props, Arc::new(GateOps(gate.clone()))).unwrap();
    let params: CreateParams = serde_json::from_value(serde_json::json!({
        "name": format!("{prefix}_cache"), "cache_bdev": pmem_name, "origin_bdev": origin,
        "data_crc": true, "segment_size": 1 << 20, "mode": mode
    }))
    .unwrap();
    let pc = h.run_on(0, || cache::vbdev::create(params.clone()).unwrap());
    let cache = cache::vbdev::cache_of(&pc).unwrap();
    let desc = Some(open(&h, &params.name, true));
    let origin = Some(open(&h, &origin, false));
    Env {
        h,
        gate,
        pc: Some(pc),
        cache,
        desc,
        origin,
        scratch: DmaBuf::new(BS, 4096).unwrap(),
        others: vec![ob, pmem_bdev],
    }
}

fn open(h: &Harness, name: &str, write: bool) -> (BdevDesc, BdevChannel) {
    let d = BdevDesc::open(name, write, |_| {}).unwrap();
    let ch = h.run_on(0, || d.get_io_channel().unwrap());
    (d, ch)
}

impl Env {
    fn op(&self, kind: Kind, lba: u64, blocks: u64, buf: &DmaBuf, tag: usize) -> Op {
        Op {
            ch: self.desc.as_ref().unwrap().1.clone(),
            kind,
            lba,
            blocks,
            buf: iov(buf),
            tag,
        }
    }

    fn run(&self, op: Op) {
        self.h.run_on(0, || submit(op));
    }

    /// Writes with the origin open, and waits for them.
    fn write_now(&self, lba: u64, b: &DmaBuf) {
        let n = (b.len() / BS) as u64;
        self.run(self.op(Kind::Write, lba, n, b, 1));
        self.h.poll_until_idle(100);
        assert_eq!(take_done(), vec![(1, true)], "write {lba}+{n}");
    }

    /// Closes the origin and takes every bdev_io its channel gives out (held there), so the
    /// next origin I/O on this thread is refused. Returns how many it took.
    fn fill(&self) -> usize {
        CLOSED.with(|c| c.set(true));
        let (_, ch) = self.origin.as_ref().unwrap();
        let buf = iov(&self.scratch);
        let mut n = 0;
        self.h.run_on(0, || {
            while ch.read(&[buf], 0, 1, record, IoCtx::Word(FILLER)).is_ok() {
                n += 1;
            }
        });
        assert!(n > 0 && n <= POOL as usize, "filled {n}");
        n
    }

    /// Releases the parked origin I/Os one at a time, running the threads after each (so every
    /// bdev_io that frees is taken again at once), until nothing is parked or waits; opens the
    /// origin then. Returns the completions (fillers left out, all checked successful).
    fn drain(&mut self) -> Vec<(usize, bool)> {
        let mut done = Vec::new();
        let mut quiet = 0;
        for _ in 0..100_000 {
            self.h.poll_until_idle(100);
            done.extend(take_done());
            if release_one() {
                quiet = 0;
                continue;
            }
            // Nothing parked: let timers due (writeback's pace) run before concluding.
            quiet += 1;
            if quiet > 20 {
                break;
            }
            self.h.advance_us(1_000);
        }
        assert_eq!(parked(), 0, "origin I/O left parked");
        CLOSED.with(|c| c.set(false));
        self.h.poll_until_idle(100);
        done.extend(take_done());
        assert!(done.iter().all(|(_, ok)| *ok), "failed I/O: {done:?}");
        done.retain(|(w, _)| *w != FILLER);
        done
    }

    /// What the bdev layer's stall watchdog would log for the cache's channel.
    fn stall_report(&self) -> String {
        let ch = &self.desc.as_ref().unwrap().1;
        ch.module_channel::<cache::CacheBdevChannel>()
            .and_then(|c| c.stall_report())
            .unwrap()
    }

    fn stat(&self, k: &str) -> u64 {
        let st = cache::rpc::stats_json(&self.cache);
        st[k].as_u64().unwrap_or_else(|| panic!("{k} in {st}"))
    }

    fn teardown(mut self) {
        self.desc = None;
        self.origin = None;
        unregister(&self.h, self.pc.take().unwrap());
        for b in std::mem::take(&mut self.others) {
            unregister(&self.h, b);
        }
    }
}

// ------------------------------------------------------------------- the tests

#[test]
fn a_read_miss_waits_for_an_origin_io_and_completes() {
    let mut e = env("pl_miss", "writeback");
    e.fill();
    let r = DmaBuf::new(8 * BS, 4096).unwrap();
    e.run(e.op(Kind::Read, 10, 8, &r, 1));
    e.h.poll_until_idle(100);
    let report = e.stall_report();
    assert!(report.contains("1 I/Os at the origin"), "{report}");
    assert_eq!(e.drain(), vec![(1, true)]);
    let report = e.stall_report();
    assert!(report.contains("0 I/Os at the origin"), "{report}");
    assert_eq!(r.as_slice(), buf_of((10..18).map(origin_block)).as_slice());
    assert_eq!(e.stat("read_misses"), 1);
    assert!(e.stat("origin_io_waits") > 0, "the miss waited");
    assert_eq!(e.stat("origin_errors"), 0);
    // Cached on the way: read again with the origin closed and nothing free, from pmem alone.
    e.fill();
    let again = DmaBuf::new(8 * BS, 4096).unwrap();
    e.run(e.op(Kind::Read, 10, 8, &again, 2));
    assert_eq!(e.drain(), vec![(2, true)]);
    assert_eq!(again.as_slice(), r.as_slice());
    assert_eq!(e.stat("read_hits"), 1);
    e.teardown();
}

#[test]
fn a_partial_hit_waits_for_each_miss_and_completes() {
    let mut e = env("pl_part", "writeback");
    for lba in [100u64, 102, 104] {
        e.write_now(lba, &buf_of([written_block(lba, 7)]));
    }
    e.fill();
    let r = DmaBuf::new(6 * BS, 4096).unwrap();
    e.run(e.op(Kind::Read, 100, 6, &r, 1));
    assert_eq!(e.drain(), vec![(1, true)]);
    let want = buf_of((100..106).map(|l| {
        if l % 2 == 0 {
            written_block(l, 7)
        } else {
            origin_block(l)
        }
    }));
    assert_eq!(r.as_slice(), want.as_slice());
    assert_eq!(e.stat("read_partial_hits"), 1);
    assert!(e.stat("origin_io_waits") > 0);
    e.teardown();
}

#[test]
fn a_writethrough_write_waits_for_an_origin_io_and_lands_on_both() {
    let mut e = env("pl_wt", "writethrough");
    e.fill();
    let w = buf_of((200..208).map(|l| written_block(l, 9)));
    e.run(e.op(Kind::Write, 200, 8, &w, 1));
    assert_eq!(e.drain(), vec![(1, true)]);
    for l in 200..208 {
        assert_eq!(e.gate.block(l), written_block(l, 9), "origin block {l}");
    }
    assert!(e.stat("origin_io_waits") > 0);
    assert_eq!(e.stat("dirty_bytes"), 0);
    // The clean copy serves the read without the origin.
    e.fill();
    let r = DmaBuf::new(8 * BS, 4096).unwrap();
    e.run(e.op(Kind::Read, 200, 8, &r, 2));
    assert_eq!(e.drain(), vec![(2, true)]);
    assert_eq!(r.as_slice(), w.as_slice());
    assert_eq!(e.stat("read_hits"), 1);
    e.teardown();
}

#[test]
fn a_flush_waits_for_its_origin_flush_and_completes() {
    let mut e = env("pl_flush", "writethrough");
    // The first write around the cache gets writeback's prompt origin flush; the second comes
    // before the next one is due (the clock stands), so the FLUSH must flush the origin itself.
    e.write_now(300, &buf_of([written_block(300, 3)]));
    e.write_now(301, &buf_of([written_block(301, 3)]));
    let flushes = e.gate.flushes();
    let waits = e.stat("origin_io_waits");
    e.fill();
    let none = DmaBuf::new(BS, 4096).unwrap();
    e.run(e.op(Kind::Flush, 0, 0, &none, 1));
    assert_eq!(e.drain(), vec![(1, true)]);
    assert!(e.gate.flushes() > flushes, "the origin was flushed");
    assert!(e.stat("origin_io_waits") > waits, "the origin flush waited");
    assert_eq!(e.stat("origin_errors"), 0);
    e.teardown();
}

#[test]
fn writeback_waits_for_origin_ios_and_writes_everything_back() {
    let mut e = env("pl_wb", "writeback");
    // Every other block: one origin write per block, many more than the pool holds.
    let lbas: Vec<u64> = (0..48).map(|i| 400 + 2 * i).collect();
    for &l in &lbas {
        e.write_now(l, &buf_of([written_block(l, 5)]));
    }
    assert_eq!(e.stat("dirty_bytes"), 48 * BS as u64);
    let filled = e.fill();
    e.h.run_on(0, || e.cache.flush_start());
    // Its first round has the lanes' open key-sets sealed; the next one writes.
    let waiting = "waiting for an origin bdev_io for its batch's writes";
    for _ in 0..10 {
        e.h.poll_until_idle(100);
        if e.stall_report().contains(waiting) {
            break;
        }
        e.h.advance_us(1_000);
    }
    let report = e.stall_report();
    assert!(report.contains(waiting), "{report}");
    assert!(e.drain().is_empty());
    let st = e.cache.flush_status();
    assert_eq!(st["in_progress"], false, "{st}");
    assert_eq!(e.stat("dirty_bytes"), 0);
    for &l in &lbas {
        assert_eq!(e.gate.block(l), written_block(l, 5), "origin block {l}");
    }
    assert!(
        e.stat("origin_io_waits") > 0,
        "writeback waited ({filled} I/Os held)"
    );
    assert_eq!(e.stat("origin_errors"), 0);
    e.teardown();
}

/// Far more parents than the pool holds, every one needing an origin child (misses and
/// writethrough writes): the parents hold every I/O of the cache's pool, their children come
/// from the origin's.
#[test]
fn a_queue_deeper_than_the_pool_completes() {
    let mut e = env("pl_deep", "writethrough");
    CLOSED.with(|c| c.set(true));
    let bufs: Vec<DmaBuf> = (0..8 * POOL as u64)
        .map(|i| buf_of([written_block(600 + i, 4)]))
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        let kind = if i % 2 == 0 { Kind::Read } else { Kind::Write };
        e.run(e.op(kind, 600 + i as u64, 1, b, i));
    }
    let mut done = e.drain();
    done.sort_unstable();
    assert_eq!(done, (0..bufs.len()).map(|i| (i, true)).collect::<Vec<_>>());
    for (i, b) in bufs.iter().enumerate() {
        let l = 600 + i as u64;
        let want = if i % 2 == 0 {
            origin_block(l)
        } else {
            written_block(l, 4)
        };
        assert_eq!(b.as_slice(), want.as_slice(), "block {l}");
    }
    e.teardown();
}
