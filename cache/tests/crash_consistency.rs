//! Crash consistency of the whole cache bdev: random workloads under the deterministic harness,
//! power cuts at random persistence points, and every cut rebuilt and checked against an oracle.
//!
//! **Workload.** Two or three harness threads, each with its own channel (so its own lane), submit
//! writes of 1–16 blocks (FUA or not, sometimes in two iovecs), unmaps, write_zeroes, reads and
//! FLUSHes, several in flight at once, over a small LBA space (256 blocks of 4 KiB, or 1024 of
//! 512 bytes) so versions of a block pile up. The virtual clock moves so writeback batches run,
//! `flush_start` is asked now and then, and write storms from the non-management threads fill
//! the cache: it is as small as a cache can be (17 MiB of pmem: 16 segments of 1 MiB, 8 of them
//! key segments), gc_percent is often 0, so GC reclaims all the time and writes wait for space.
//! Every block written carries a self-identifying pattern (magic, write id, LBA, and a body
//! derived from them), so a block read back is exactly one version, the origin's initial content
//! (write id 0), zeroes, or garbage (a torn mix of versions, another block's data: a failure).
//! Writes (and unmaps) in flight never overlap each other, so each block's versions form one
//! sequence whose order is the cache's `seq` order; reads may overlap anything.
//!
//! **Cuts.** The pmem is a [`CrashPmem`] behind a [`Tap`]: just before a chosen fence (every store
//! since the previous fence still in flight) or, through `CrashPmem::set_fence_hook`, just after
//! one, the hook takes a crash image (a random subset of the unpersisted words, or none, or all,
//! or a patterned subset) and, at the same instant, a power-cut image of the origin (a RAM disk
//! with a volatile write cache: its durable blocks plus a random choice of the blocks written
//! since a FLUSH made them durable), and notes how far the oracle's event log had got. Cuts are
//! spaced at random, deterministically per seed (the harness's virtual clock is moved far ahead
//! of the real one so nothing depends on the machine's speed, see [`harness`]).
//!
//! **Check.** Each cut is rebuilt in a separate harness: the origin from its image, the pmem from
//! its crash image, the cache created again without `format` (reattach, so replay). Replay must
//! succeed. Then, with `E` the oracle position of the cut and `W` the written-back sequence replay
//! found:
//! 1. every block reads as a version at least as new as the newest *durable* one at `E` (written
//!    by a FUA write completed before `E`, or completed before a FLUSH that completed before `E`;
//!    in durable mode, every completed write) and no newer than the newest submitted before `E`
//!    — never garbage, never a torn mix;
//! 2. every origin block holds such a version too, at least as new as the newest version whose
//!    keys all have `seq ≤ W` (writeback flushed the origin before it persisted `W`, so the origin
//!    holds the prefix of the write history up to `W`; newer batches may have reached it in part);
//! 3. `flush_start` on the rebuilt cache finishes, the cache then reads exactly what it read
//!    before, and the origin holds exactly that; for some cuts the rebuilt cache runs on a
//!    `CrashPmem` itself and a second power cut during that writeback must rebuild to the very
//!    same content (recovery and post-recovery writeback/GC never change data).
//!
//! **Restarts.** Now and then the workload carries on from a cut instead of from where it was:
//! the abandoned timeline is drained and deleted, the cache is re-created from the cut's images
//! (replay) and every block checked as above; the oracle then forgets the versions that did not
//! survive (they must never come back) and the workload goes on, with new cuts, on the recovered
//! cache — so lanes resuming after a torn key-set, reused segments, and the sequence resuming
//! after replay are all crashed again.
//!
//! Live reads are checked as they complete, and each workload ends by draining, reading every
//! block back exactly, writing everything back (the origin then holds exactly the newest data),
//! and a clean delete + re-create.
//!
//! One test injects origin failures through an error bdev (`bdev_error_inject_error` semantics)
//! during the crash workloads; another fails exactly the N-th origin write (and flushes), for
//! N = 1, 2, …, during writeback and GC. Both check that nothing is lost and that `origin_errors`
//! counts exactly the failures the origin returned. Randomised fuzzing of the on-media parser is
//! `format_props.rs` (proptest over every decoder: arbitrary bytes, single-byte mutations with
//! and without a resealed crc); it is not repeated here.
//!
//! **Regressions** the harness found, each with a focused test: a GC livelock when a lane's
//! key-set spans more `seq`s than GC's window of another lane covers
//! (`gc_livelock_on_a_key_set_wider_than_the_window`); around the cache, a FLUSH that did not
//! flush the origin (`a_flush_makes_writes_around_the_cache_durable`) and clean copies logged for
//! data the origin could still lose (`a_clean_copy_never_outlives_the_origin_data_it_copies`).
//!
//! Budget: the default run explores at least 10 000 crash points over all tests
//! (`PCACHE_CRASH_POINTS=N` sets another total, `PCACHE_LONG=1` asks for 200 000). A failure
//! prints the test, the seed and the cut; `PCACHE_CRASH_SEED=<seed>` runs only that workload and
//! `PCACHE_CRASH_CUT=before:<fence>[@<epoch>]` (or `after:…`) checks only that cut.

mod common;
use common::crash::{Disk, RamPmem, Tap};
use common::{iov, record, unregister, wait};

use bdev::error_inject::rpc::{ErrorCreateParams, ErrorInjectParams, ErrorType, InjectIoType};
use bdev::{Bdev, BdevChannel, BdevDesc, BdevIo, DmaBuf, IoCtx, IoFlags, IoType, IoVec};
use cache::instance::Cache;
use cache::params::CreateParams;
use pmem::{CrashPmem, Pmem};
use poller::Harness;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

// ------------------------------------------------------------------------------------------
// Block patterns.

const PAT_MAGIC: u32 = 0x5054_4343; // "CCTP"
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(GOLDEN);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn body_base(lba: u64, wid: u32) -> u64 {
    splitmix(lba.wrapping_mul(GOLDEN) ^ (u64::from(wid) << 20) ^ 0x5bd1_e995)
}

/// Block `lba` as written by write `wid` (0: the origin's initial content).
fn fill_block(dst: &mut [u8], lba: u64, wid: u32) {
    dst[0..4].copy_from_slice(&PAT_MAGIC.to_le_bytes());
    dst[4..8].copy_from_slice(&wid.to_le_bytes());
    dst[8..16].copy_from_slice(&lba.to_le_bytes());
    let base = body_base(lba, wid);
    for (i, c) in dst[16..].chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(
            &base
                .wrapping_add((i as u64).wrapping_mul(GOLDEN))
                .to_le_bytes(),
        );
    }
}

/// What a block read back is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ident {
    Zero,
    /// Written by this write (0: initial content).
    Pat(u32),
    /// Neither: a torn mix, another block's data, garbage.
    Bad(String),
}

fn identify(src: &[u8], lba: u64) -> Ident {
    if src.iter().all(|&b| b == 0) {
        return Ident::Zero;
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&src[r]);
        u64::from_le_bytes(b)
    };
    let (magic, wid, at) = (word(0..4) as u32, word(4..8) as u32, word(8..16));
    if magic != PAT_MAGIC {
        return Ident::Bad(format!("no pattern header (first word {:#x})", word(0..8)));
    }
    if at != lba {
        return Ident::Bad(format!("block {at}'s data (write {wid}) at block {lba}"));
    }
    let base = body_base(lba, wid);
    let bad = src[16..].chunks_exact(8).enumerate().position(|(i, c)| {
        c != base
            .wrapping_add((i as u64).wrapping_mul(GOLDEN))
            .to_le_bytes()
    });
    match bad {
        None => Ident::Pat(wid),
        Some(w) => Ident::Bad(format!(
            "torn: header of write {wid}, body differs from byte {} on",
            16 + 8 * w
        )),
    }
}

// ------------------------------------------------------------------------------------------
// The oracle: every block's versions in order, with the events that make them visible/durable.

/// Event numbers: every submission and completion takes the next one; a cut notes the current.
const NEVER: u64 = u64::MAX;

thread_local! {
    static EVENTS: Cell<u64> = const { Cell::new(0) };
    /// Live completions: (op id, success, event).
    static DONE: RefCell<Vec<(usize, bool, u64)>> = const { RefCell::new(Vec::new()) };
    /// Cuts taken by the hooks, waiting to be checked.
    static CUTS: RefCell<Vec<Cut>> = const { RefCell::new(Vec::new()) };
    /// Seconds spent per phase (for the summary line).
    static PHASES: RefCell<BTreeMap<&'static str, f64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Adds the time since `*t` to phase `name` and restarts `*t`.
fn lap(t: &mut Instant, name: &'static str) {
    let now = Instant::now();
    let d = now.duration_since(*t).as_secs_f64();
    PHASES.with(|p| *p.borrow_mut().entry(name).or_default() += d);
    *t = now;
}

fn tick() -> u64 {
    EVENTS.with(|e| {
        let v = e.get() + 1;
        e.set(v);
        v
    })
}

fn events_now() -> u64 {
    EVENTS.with(Cell::get)
}

fn live_done(io: BdevIo, ok: bool, ctx: IoCtx) {
    drop(io);
    if let IoCtx::Word(w) = ctx {
        let ev = tick();
        DONE.with(|d| d.borrow_mut().push((w, ok, ev)));
    }
}

#[derive(Clone, Copy, Debug)]
struct Version {
    /// The write's id (0: initial content); for a zero version the unmap's id.
    wid: u32,
    zero: bool,
    submit: u64,
    complete: u64,
    /// Every key of this version has `seq` ≤ this (NEVER: not known yet).
    seq_hi: u64,
}

struct Hist {
    v: Vec<Version>,
    /// (event, version): from this event on, this version (or a newer one) must survive. The
    /// versions are kept non-decreasing.
    durable: Vec<(u64, u32)>,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            v: vec![Version {
                wid: 0,
                zero: false,
                submit: 0,
                complete: 0,
                seq_hi: 0,
            }],
            durable: Vec::new(),
        }
    }

    /// The newest version submitted at or before event `e`.
    fn newest_submitted(&self, e: u64) -> usize {
        self.v.partition_point(|v| v.submit <= e) - 1
    }

    /// The newest version completed strictly before event `e`.
    fn newest_completed_before(&self, e: u64) -> usize {
        self.v.partition_point(|v| v.complete < e) - 1
    }

    /// The oldest version that may be found after a power cut at event `e`.
    fn durable_at(&self, e: u64) -> usize {
        match self.durable.partition_point(|d| d.0 <= e) {
            0 => 0,
            i => self.durable[i - 1].1 as usize,
        }
    }

    fn make_durable(&mut self, ev: u64, idx: usize) {
        let idx = idx.max(self.durable.last().map_or(0, |d| d.1 as usize));
        self.durable.push((ev, idx as u32));
    }

    /// The newest version every key of which is at or below `seq`.
    fn written_back(&self, seq: u64) -> usize {
        self.v.iter().rposition(|v| v.seq_hi <= seq).unwrap_or(0)
    }

    fn matches(&self, id: &Ident, lo: usize, hi: usize) -> bool {
        let range = self.v.get(lo..=hi).unwrap_or(&[]);
        match id {
            Ident::Zero => range.iter().any(|v| v.zero),
            Ident::Pat(w) => range.iter().any(|v| !v.zero && v.wid == *w),
            Ident::Bad(_) => false,
        }
    }

    fn describe(&self) -> String {
        let from = self.v.len().saturating_sub(16);
        let d: Vec<String> = self
            .v
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, v)| {
                let what = if v.zero {
                    format!("zero#{}", v.wid)
                } else {
                    format!("w{}", v.wid)
                };
                let c = if v.complete == NEVER {
                    "-".into()
                } else {
                    v.complete.to_string()
                };
                let s = if v.seq_hi == NEVER {
                    "?".into()
                } else {
                    v.seq_hi.to_string()
                };
                format!("[{i}] {what} sub {} done {c} seq≤{s}", v.submit)
            })
            .collect();
        let dur = &self.durable[self.durable.len().saturating_sub(6)..];
        format!(
            "versions {}{}; durable (event, version) ...{dur:?}",
            if from > 0 { "..., " } else { "" },
            d.join(", ")
        )
    }
}

struct Oracle {
    blocks: Vec<Hist>,
}

impl Oracle {
    fn new(n: u64) -> Oracle {
        Oracle {
            blocks: (0..n).map(|_| Hist::new()).collect(),
        }
    }

    /// Checks the block images `data` (blocks from 0) read after a cut at event `e`.
    fn check_cut_reads(&self, data: &[u8], bs: usize, e: u64) -> Result<(), String> {
        for (b, h) in self.blocks.iter().enumerate() {
            let id = identify(&data[b * bs..(b + 1) * bs], b as u64);
            let (lo, hi) = (h.durable_at(e), h.newest_submitted(e));
            if !h.matches(&id, lo, hi) {
                return Err(format!(
                    "block {b} reads as {id:?} after the cut, allowed versions {lo}..={hi}; {}",
                    h.describe()
                ));
            }
        }
        Ok(())
    }

    /// Checks the origin's image at a cut at event `e` whose written-back sequence is `w`.
    fn check_cut_origin(&self, data: &[u8], bs: usize, e: u64, w: u64) -> Result<(), String> {
        for (b, h) in self.blocks.iter().enumerate() {
            let id = identify(&data[b * bs..(b + 1) * bs], b as u64);
            let (lo, hi) = (h.written_back(w), h.newest_submitted(e));
            if !h.matches(&id, lo, hi) {
                return Err(format!(
                    "origin block {b} holds {id:?} at the cut (written-back seq {w}), allowed \
                     versions {lo}..={hi}; {}",
                    h.describe()
                ));
            }
        }
        Ok(())
    }

    /// After a restart from a cut at event `e` whose blocks read back as `data`: each block's
    /// history ends at the version read (newer ones were lost and must never come back), which
    /// is durable from event `now` on. `seq`: the restarted cache's last `seq`.
    fn roll_back(
        &mut self,
        data: &[u8],
        bs: usize,
        e: u64,
        now: u64,
        seq: u64,
    ) -> Result<(), String> {
        for (b, h) in self.blocks.iter_mut().enumerate() {
            let id = identify(&data[b * bs..(b + 1) * bs], b as u64);
            let (lo, hi) = (h.durable_at(e), h.newest_submitted(e));
            let Some(i) = (lo..=hi).rev().find(|&i| h.matches(&id, i, i)) else {
                return Err(format!(
                    "block {b} reads as {id:?} after the restart, allowed versions \
                     {lo}..={hi}; {}",
                    h.describe()
                ));
            };
            h.v.truncate(i + 1);
            h.durable.retain(|d| d.0 <= e);
            for v in &mut h.v {
                if v.complete > e {
                    v.complete = now;
                }
                if v.seq_hi == NEVER {
                    v.seq_hi = seq;
                }
            }
            h.make_durable(now, i);
        }
        Ok(())
    }

    /// Every version completed: each block must be exactly its newest.
    fn check_exact(&self, data: &[u8], bs: usize, what: &str) -> Result<(), String> {
        for (b, h) in self.blocks.iter().enumerate() {
            let id = identify(&data[b * bs..(b + 1) * bs], b as u64);
            let last = h.v.len() - 1;
            if !h.matches(&id, last, last) {
                return Err(format!(
                    "{what}: block {b} is {id:?}, expected version {last}; {}",
                    h.describe()
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Configuration.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    /// 4 KiB blocks, three threads, every gc_percent, data_crc on and off.
    Mixed,
    /// 512-byte blocks, durable mode half the time.
    SmallBlocks,
    /// Origin behind an error bdev with failure bursts during the workload.
    OriginFaults,
    /// No cuts; the origin disk fails its N-th write (and more, see `Live::new`).
    OriginSweep,
    /// Every cache mode, switched at random while the workload runs (`bdev_pcache_set_options`).
    Modes,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    profile: Profile,
    seed: u64,
    threads: usize,
    bs: usize,
    blocks: u64,
    pmem_bytes: usize,
    gc_percent: u32,
    data_crc: bool,
    durable: bool,
    dirty_target: u32,
    /// The origin offers WRITE_ZEROES (else writeback zeroes with UNMAP).
    write_zeroes: bool,
    steps: usize,
    /// Mean number of fences between two cuts.
    cut_gap: u64,
    /// One cut in this many is rebuilt on a CrashPmem and cut again during its writeback.
    nested_every: u64,
    /// The origin disk fails its write-type I/O with this ordinal (0: none; see `Live::new`).
    fail_nth: u64,
    /// The mode the cache is created in (and re-created in after a restart).
    mode: &'static str,
    /// The origin has a volatile write cache (else every write is durable when it completes).
    origin_cache: bool,
    /// One checked cut in this many becomes the workload's new present: it carries on from
    /// the cut's images, after replay (at most `max_restarts` times; 0: never).
    restart_every: u64,
    max_restarts: u32,
}

impl Config {
    fn new(profile: Profile, seed: u64) -> Config {
        let mut r = StdRng::seed_from_u64(seed ^ 0xC0FF_EE00);
        let pick = |r: &mut StdRng, xs: &[u32]| xs[r.random_range(0..xs.len())];
        let mib = 1usize << 20;
        let base = Config {
            profile,
            seed,
            threads: 3,
            bs: 4096,
            blocks: 256,
            pmem_bytes: 17 * mib,
            gc_percent: pick(&mut r, &[0, 0, 30, 60, 80]),
            data_crc: r.random_bool(0.5),
            durable: false,
            dirty_target: pick(&mut r, &[0, 0, 40]),
            write_zeroes: r.random_bool(0.5),
            steps: 2500,
            cut_gap: 16,
            nested_every: 16,
            fail_nth: 0,
            mode: "writeback",
            origin_cache: true,
            restart_every: 25,
            max_restarts: 4,
        };
        match profile {
            Profile::Mixed => base,
            Profile::SmallBlocks => Config {
                threads: r.random_range(2..=3),
                bs: 512,
                blocks: 1024,
                gc_percent: pick(&mut r, &[0, 40]),
                durable: r.random_bool(0.5),
                steps: 2500,
                ..base
            },
            Profile::OriginFaults => Config {
                threads: 2,
                gc_percent: pick(&mut r, &[0, 50]),
                steps: 2000,
                ..base
            },
            Profile::Modes => Config {
                mode: pick_mode(&mut r),
                steps: 2000,
                ..base
            },
            Profile::OriginSweep => Config {
                threads: 2,
                steps: 600,
                cut_gap: 0,
                nested_every: 0,
                ..base
            },
        }
    }
}

/// A cache mode, among those `PCACHE_CRASH_MODES` (comma-separated) allows, else any.
fn pick_mode(r: &mut StdRng) -> &'static str {
    let all = ["writeback", "writethrough", "writearound", "passthrough"];
    let allowed: Vec<&'static str> = match std::env::var("PCACHE_CRASH_MODES") {
        Ok(v) => all
            .into_iter()
            .filter(|m| v.split(',').any(|x| x == *m))
            .collect(),
        Err(_) => all.to_vec(),
    };
    assert!(!allowed.is_empty(), "PCACHE_CRASH_MODES names no mode");
    allowed[r.random_range(0..allowed.len())]
}

/// Where a cut falls: just before (or just after) fence number `fence` (1-based) of the pmem of
/// epoch `epoch` (the workload restarts from some cuts: each restart begins a new epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CutAt {
    epoch: u32,
    after: bool,
    fence: u64,
}

impl std::fmt::Display for CutAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = if self.after { "after" } else { "before" };
        write!(f, "{w}:{}", self.fence)?;
        if self.epoch > 0 {
            write!(f, "@{}", self.epoch)?;
        }
        Ok(())
    }
}

fn parse_cut(s: &str) -> Option<CutAt> {
    let (w, rest) = s.split_once(':')?;
    let (k, epoch) = match rest.split_once('@') {
        Some((k, e)) => (k, e.parse().ok()?),
        None => (rest, 0),
    };
    let fence = k.parse().ok()?;
    let after = match w {
        "before" => false,
        "after" => true,
        _ => return None,
    };
    Some(CutAt {
        epoch,
        after,
        fence,
    })
}

/// A crash image of the pmem and one of the origin, taken at the same instant.
type Images = (Vec<u8>, Vec<u8>);

struct Cut {
    at: CutAt,
    /// The oracle's event count when the power went.
    ev: u64,
    image: Vec<u8>,
    origin: Vec<u8>,
    /// How the crash image was chosen.
    mode: &'static str,
}

/// Which fences the hooks cut at.
struct Plan {
    seed: u64,
    epoch: u32,
    rng: StdRng,
    gap: u64,
    next_before: u64,
    next_after: u64,
}

impl Plan {
    fn new(seed: u64, epoch: u32, gap: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(splitmix(seed ^ 0x00C7_0000 ^ u64::from(epoch)));
        let next_before = rng.random_range(1..=2 * gap.max(1));
        // After-fence cuts are rarer: little is in flight right after a fence.
        let next_after = rng.random_range(1..=8 * gap.max(1));
        Plan {
            seed,
            epoch,
            rng,
            gap,
            next_before,
            next_after,
        }
    }

    fn wants(&mut self, at: CutAt) -> bool {
        if self.gap == 0 {
            return false;
        }
        match at.after {
            false if at.fence == self.next_before => {
                self.next_before += self.rng.random_range(1..=2 * self.gap);
                true
            }
            true if at.fence == self.next_after => {
                self.next_after += self.rng.random_range(1..=8 * self.gap);
                true
            }
            _ => false,
        }
    }
}

fn cut_rng(seed: u64, at: CutAt) -> StdRng {
    let w = u64::from(at.after) + 1 + (u64::from(at.epoch) << 8);
    StdRng::seed_from_u64(splitmix(seed ^ at.fence.wrapping_mul(GOLDEN) ^ w))
}

/// A crash image of `p`, chosen by `rng`.
fn crash_image(p: &CrashPmem, rng: &mut StdRng) -> (Vec<u8>, &'static str) {
    match rng.random_range(0..20) {
        0..=12 => (p.crash_image(rng), "random"),
        13 => (p.crash_image_none(), "none"),
        14..=15 => (p.crash_image_all(), "all"),
        16..=17 => {
            let salt: u64 = rng.random();
            (p.crash_image_with(|w| splitmix(w ^ salt) & 1 == 0), "half")
        }
        _ => {
            // Everything in flight below a random address made it, nothing above.
            let cut: u64 = rng.random_range(0..p.len() / 8);
            (p.crash_image_with(|w| w < cut), "prefix")
        }
    }
}

/// Installs the hooks that take cuts of `tap` (and of `disk` at the same instant).
fn install_cut_hooks(tap: &Arc<Tap>, disk: &Arc<Disk>, plan: Plan) {
    let (seed, epoch) = (plan.seed, plan.epoch);
    let plan = Arc::new(Mutex::new(plan));
    let take = {
        let disk = disk.clone();
        move |p: &CrashPmem, at: CutAt| {
            let mut t = Instant::now();
            let mut rng = cut_rng(seed, at);
            let (image, mode) = crash_image(p, &mut rng);
            let origin = disk.crash_image(&mut rng);
            let ev = events_now();
            CUTS.with(|c| {
                c.borrow_mut().push(Cut {
                    at,
                    ev,
                    image,
                    origin,
                    mode,
                })
            });
            lap(&mut t, "capture");
        }
    };
    let take = Arc::new(take);
    {
        let (plan, take) = (plan.clone(), take.clone());
        tap.set_before_fence(Some(Box::new(move |p: &CrashPmem| {
            let at = CutAt {
                epoch,
                after: false,
                fence: p.fence_count() + 1,
            };
            if plan
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .wants(at)
            {
                take(p, at);
            }
        })));
    }
    let weak = Arc::downgrade(&tap.inner);
    tap.inner.set_fence_hook(Some(Box::new(move |n| {
        let at = CutAt {
            epoch,
            after: true,
            fence: n,
        };
        if plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wants(at)
            && let Some(p) = weak.upgrade()
        {
            take(&p, at);
        }
    })));
}

fn remove_cut_hooks(tap: &Tap) {
    tap.set_before_fence(None);
    tap.inner.set_fence_hook(None);
}

// ------------------------------------------------------------------------------------------
// Shared helpers.

fn params(cfg: &Config, name: &str, pmem: &str, origin: &str) -> CreateParams {
    serde_json::from_value(serde_json::json!({
        "name": name, "cache_bdev": pmem, "origin_bdev": origin,
        "data_crc": cfg.data_crc, "durable": cfg.durable, "gc_percent": cfg.gc_percent,
        "mode": cfg.mode,
        "writeback_dirty_target": cfg.dirty_target, "segment_size": 1 << 20
    }))
    .unwrap()
}

fn initial_image(bs: usize, blocks: u64) -> Vec<u8> {
    let mut img = vec![0u8; bs * blocks as usize];
    for (b, c) in img.chunks_exact_mut(bs).enumerate() {
        fill_block(c, b as u64, 0);
    }
    img
}

/// Reads every block through `ch` on thread 0 (chunks of 64 blocks, all in flight at once).
fn read_all(h: &Harness, ch: &BdevChannel, bs: usize, blocks: u64) -> Result<Vec<u8>, String> {
    let chunk = 64u64;
    let bufs: Vec<(u64, u64, DmaBuf)> = (0..blocks)
        .step_by(chunk as usize)
        .map(|lba| {
            let n = chunk.min(blocks - lba);
            let mut b = DmaBuf::new(n as usize * bs, 4096).unwrap();
            b.as_mut_slice().fill(0xA5);
            (lba, n, b)
        })
        .collect();
    h.run_on(0, || {
        for (i, (lba, n, b)) in bufs.iter().enumerate() {
            ch.read(&[iov(b)], *lba, *n, record, IoCtx::Word(i))
                .map_err(|e| format!("read at {lba}: {}", e.error))?;
        }
        Ok::<(), String>(())
    })?;
    let done = wait(h, bufs.len());
    if done.len() != bufs.len() {
        return Err(format!("{} of {} reads completed", done.len(), bufs.len()));
    }
    if let Some((i, _)) = done.iter().find(|(_, ok)| !ok) {
        return Err(format!("the read at block {} failed", bufs[*i].0));
    }
    let mut out = Vec::with_capacity(blocks as usize * bs);
    for (_, _, b) in &bufs {
        out.extend_from_slice(b.as_slice());
    }
    Ok(out)
}

/// flush_start, then polls (moving the clock) until writeback has caught up.
fn flush_all(h: &mut Harness, c: &Cache) -> Result<(), String> {
    h.run_on(0, || c.flush_start());
    for _ in 0..20_000 {
        h.poll_until_idle(100);
        let st = c.flush_status();
        if !st["in_progress"].as_bool().unwrap_or(true) {
            if st["dirty_bytes"] != 0 {
                return Err(format!("flush finished with dirty data left: {st}"));
            }
            return Ok(());
        }
        h.advance_us(1_000);
    }
    Err(format!("flush did not finish: {}", c.flush_status()))
}

/// A harness whose virtual clock runs far ahead of the real one. The bdev layer stamps I/O with
/// the real clock (`BdevChannel::now` outside a completion batch) and writeback takes its idea of
/// the latest foreground I/O from those stamps, while its poller compares with the thread's
/// (virtual) time; a virtual clock that real time never catches up with keeps those stamps from
/// ever counting, so what a seed does does not depend on how fast the machine runs it.
fn harness(threads: usize) -> Harness {
    let mut h = Harness::new(threads);
    h.advance_us(1_000 * 3_600 * 1_000_000);
    h
}

/// Where each block's data comes from in `c` (for messages): "a dirty cache copy", "a clean
/// cache copy", "a zero extent" or "the origin".
fn block_sources(c: &Cache, blocks: u64) -> Vec<&'static str> {
    let mut v = vec!["the origin"; blocks as usize];
    c.index().lookup(0, blocks as u32, |p| {
        if let cache::index::Piece::Hit(e) = p {
            let what = match (e.zero, e.dirty) {
                (true, _) => "a zero extent",
                (false, true) => "a dirty cache copy",
                (false, false) => "a clean cache copy",
            };
            for b in e.lba..e.lba + u64::from(e.len) {
                v[b as usize] = what;
            }
        }
    });
    v
}

/// Each lane's key-sets from its key tail, as (min seq, max seq), for diagnostics.
fn key_log_summary(c: &Cache) -> String {
    let pm = c.pmem();
    let Ok(gens) = cache::format::read_gen_table(pm, c.layout()) else {
        return "(generation table unreadable)".into();
    };
    let tails: Vec<_> = c.meta().tails.lanes().to_vec();
    let mut out = Vec::new();
    for (lane, t) in (0u32..).zip(&tails) {
        let mut sets = Vec::new();
        let end = cache::log::walk(
            pm,
            c.layout(),
            &gens,
            c.format_id(),
            lane,
            t.key_tail,
            |f| {
                let min = f.keys.iter().map(|k| k.seq).min().unwrap_or(0);
                let max = f.keys.iter().map(|k| k.seq).max().unwrap_or(0);
                sets.push((min, max));
                Ok(())
            },
        );
        if sets.is_empty() {
            continue;
        }
        let shown: Vec<String> = sets
            .iter()
            .take(80)
            .map(|(a, b)| format!("{a}-{b}"))
            .collect();
        out.push(format!(
            "lane {lane} ({} sets, dirty tail {:?}, end {:?}): {}",
            sets.len(),
            t.dirty_tail,
            end.map(|e| e.head),
            shown.join(" ")
        ));
    }
    out.join("\n")
}

fn first_diff(a: &[u8], b: &[u8], bs: usize) -> Option<usize> {
    a.chunks(bs).zip(b.chunks(bs)).position(|(x, y)| x != y)
}

fn stat(c: &Cache, k: &str) -> u64 {
    cache::rpc::stats_json(c)[k].as_u64().unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// The checker: rebuilds a cut in its own harness.

struct Shape {
    cfg: Config,
}

/// Makes a crash image's superblock name origin `uuid`: the rebuilt origin is the live one's
/// content under another identity (bdev UUIDs are unique and the live origin is still
/// registered). A superblock that does not decode (not formatted yet, or damaged) is left alone,
/// for the rebuild to format or refuse.
fn rename_origin(image: &mut [u8], uuid: uuid::Uuid) {
    let sb = &mut image[..cache::format::SB_SIZE];
    if let Ok(mut s) = cache::format::Superblock::decode(sb) {
        s.origin.uuid = uuid;
        sb.copy_from_slice(&s.encode());
    }
}

struct Checker {
    h: Harness,
    tag: String,
    n: u64,
    checked: u64,
    nested: u64,
    /// Cuts whose replayed cache had dirty data, and whose image was a random subset.
    dirty_after: u64,
}

/// A rebuilt cache bdev and what lies under it.
struct Rebuilt {
    pc: Bdev,
    cache: Arc<Cache>,
    pmem_bdev: Bdev,
    disk_bdev: Bdev,
    disk: Arc<Disk>,
}

impl Checker {
    fn new(tag: &str) -> Checker {
        Checker {
            h: harness(1),
            tag: tag.to_string(),
            n: 0,
            checked: 0,
            nested: 0,
            dirty_after: 0,
        }
    }

    /// A fresh identity for the next rebuilt origin (the live one still holds its own).
    fn next_uuid(&mut self) -> uuid::Uuid {
        self.n += 1;
        let tag = self
            .tag
            .bytes()
            .fold(0u64, |h, b| splitmix(h ^ u64::from(b)));
        uuid::Uuid::from_u64_pair(splitmix(tag ^ self.n) | 1, self.n)
    }

    /// Builds a cache over `pm` (whose superblock names origin `uuid`) and an origin holding
    /// `origin`.
    fn rebuild(
        &mut self,
        sh: &Shape,
        pm: Arc<dyn Pmem>,
        origin: Vec<u8>,
        uuid: uuid::Uuid,
    ) -> Result<Rebuilt, String> {
        let base = format!("{}_r{}", self.tag, self.n);
        let disk = Disk::with_cache(origin, sh.cfg.bs, sh.cfg.write_zeroes, sh.cfg.origin_cache);
        let disk_bdev = disk
            .register(&format!("{base}_o"), uuid)
            .map_err(|e| format!("origin bdev: {e}"))?;
        let pmem_bdev = bdev::pmem::create_with(&format!("{base}_p"), pm, 4096)
            .map_err(|e| format!("pmem bdev: {e}"))?;
        let p = params(
            &sh.cfg,
            &format!("{base}_c"),
            pmem_bdev.name(),
            disk_bdev.name(),
        );
        let pc = self
            .h
            .run_on(0, || cache::vbdev::create(p))
            .map_err(|e| format!("re-creating the cache (replay) failed: {e}"))?;
        let cache = cache::vbdev::cache_of(&pc).ok_or("not a pcache bdev")?;
        Ok(Rebuilt {
            pc,
            cache,
            pmem_bdev,
            disk_bdev,
            disk,
        })
    }

    fn teardown(&self, r: Rebuilt) {
        drop(r.cache);
        unregister(&self.h, r.pc);
        unregister(&self.h, r.pmem_bdev);
        unregister(&self.h, r.disk_bdev);
    }

    /// Rebuilds `cut` and checks it (module doc, "Check").
    fn check(&mut self, sh: &Shape, oracle: &Oracle, cut: Cut) -> Result<(), String> {
        let (bs, blocks) = (sh.cfg.bs, sh.cfg.blocks);
        let mut t = Instant::now();
        let Cut {
            at,
            ev,
            mut image,
            origin,
            ..
        } = cut;
        let uuid = self.next_uuid();
        rename_origin(&mut image, uuid);
        let nested = {
            let mut r = cut_rng(sh.cfg.seed ^ 0x4E57, at);
            sh.cfg.nested_every > 0 && r.random_range(0..sh.cfg.nested_every) == 0
        };
        // The nested case keeps the crash double (and a tap to cut it again).
        let (tap2, pm): (Option<Arc<Tap>>, Arc<dyn Pmem>) = if nested {
            let t = Arc::new(Tap::new(Arc::new(CrashPmem::from_image(image))));
            (Some(t.clone()), t)
        } else {
            (None, Arc::new(RamPmem::new(image)))
        };
        let r = self.rebuild(sh, pm, origin, uuid)?;
        lap(&mut t, "rebuild");
        let w = r.cache.meta().tails.written_back_seq;
        if stat(&r.cache, "dirty_bytes") > 0 {
            self.dirty_after += 1;
        }
        // Nothing has run yet: the origin is still its image at the cut.
        let origin_at_cut = r.disk.contents();
        oracle.check_cut_origin(&origin_at_cut, bs, ev, w)?;
        let (d, ch) = {
            let d = BdevDesc::open(r.pc.name(), true, |_| {}).map_err(|e| e.to_string())?;
            let ch = self
                .h
                .run_on(0, || d.get_io_channel())
                .map_err(|e| e.to_string())?;
            (d, ch)
        };
        // Where each block's data comes from right after replay (for messages).
        let sources = block_sources(&r.cache, blocks);
        let first = read_all(&self.h, &ch, bs, blocks)?;
        oracle.check_cut_reads(&first, bs, ev)?;
        // A clean copy is, by definition, what the origin holds.
        if let Some(b) = (0..blocks as usize).find(|&b| {
            sources[b] == "a clean cache copy"
                && first[b * bs..(b + 1) * bs] != origin_at_cut[b * bs..(b + 1) * bs]
        }) {
            return Err(format!(
                "block {b} is served from a clean cache copy holding {:?} after replay, but the \
                 origin holds {:?}",
                identify(&first[b * bs..(b + 1) * bs], b as u64),
                identify(&origin_at_cut[b * bs..(b + 1) * bs], b as u64)
            ));
        }
        lap(&mut t, "read+check");

        // A second cut during the rebuilt cache's writeback and GC.
        let second: Arc<Mutex<Option<Images>>> = Arc::default();
        if let Some(t) = &tap2 {
            let seed = splitmix(sh.cfg.seed ^ 0x2222 ^ ev);
            let k = t.inner.fence_count() + StdRng::seed_from_u64(seed).random_range(1..=24);
            let (slot, disk) = (second.clone(), r.disk.clone());
            t.set_before_fence(Some(Box::new(move |p: &CrashPmem| {
                if p.fence_count() + 1 == k {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let (img, _) = crash_image(p, &mut rng);
                    let o = disk.crash_image(&mut rng);
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((img, o));
                }
            })));
        }
        flush_all(&mut self.h, &r.cache)?;
        // Let GC and its grace walks run too.
        for _ in 0..20 {
            self.h.poll_until_idle(100);
            self.h.advance_us(20_000);
        }
        lap(&mut t, "flush");
        let again = read_all(&self.h, &ch, bs, blocks)?;
        if let Some(b) = first_diff(&first, &again, bs) {
            return Err(format!(
                "block {b} changed after writeback on the rebuilt cache: {:?} (from {} after \
                 replay; the origin's image held {:?}) then {:?}",
                identify(&first[b * bs..(b + 1) * bs], b as u64),
                sources[b],
                identify(&origin_at_cut[b * bs..(b + 1) * bs], b as u64),
                identify(&again[b * bs..(b + 1) * bs], b as u64)
            ));
        }
        let on_origin = r.disk.contents();
        if let Some(b) = first_diff(&first, &on_origin, bs) {
            return Err(format!(
                "after writeback the origin's block {b} is {:?}, the cache reads {:?}",
                identify(&on_origin[b * bs..(b + 1) * bs], b as u64),
                identify(&first[b * bs..(b + 1) * bs], b as u64)
            ));
        }
        drop((ch, d));
        let shutdown_image = tap2.as_ref().map(|t| {
            t.set_before_fence(None);
            let mut rng = cut_rng(sh.cfg.seed ^ 0x3333, at);
            (
                crash_image(&t.inner, &mut rng).0,
                r.disk.crash_image(&mut rng),
            )
        });
        lap(&mut t, "reread");
        self.teardown(r);
        self.checked += 1;
        lap(&mut t, "teardown");

        if let Some(fallback) = shutdown_image {
            self.nested += 1;
            let (mut img, origin) = second
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or(fallback);
            let uuid = self.next_uuid();
            rename_origin(&mut img, uuid);
            let r = self
                .rebuild(sh, Arc::new(RamPmem::new(img)), origin, uuid)
                .map_err(|e| format!("second cut: {e}"))?;
            let d = BdevDesc::open(r.pc.name(), true, |_| {}).map_err(|e| e.to_string())?;
            let ch = self
                .h
                .run_on(0, || d.get_io_channel())
                .map_err(|e| e.to_string())?;
            let third = read_all(&self.h, &ch, bs, blocks)?;
            if let Some(b) = first_diff(&first, &third, bs) {
                return Err(format!(
                    "second cut (during the rebuilt cache's writeback): block {b} reads {:?}, \
                     it read {:?} after the first recovery",
                    identify(&third[b * bs..(b + 1) * bs], b as u64),
                    identify(&first[b * bs..(b + 1) * bs], b as u64)
                ));
            }
            drop((ch, d));
            self.teardown(r);
            lap(&mut t, "nested");
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// The live workload.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write { fua: bool },
    Zero { unmap: bool },
    Read,
    Flush,
}

struct Op {
    kind: Kind,
    lba: u64,
    n: u64,
    submit: u64,
    /// The version each block got (writes and zeroes).
    vidx: Vec<u32>,
    deferred: bool,
    /// Sent to the origin (a mode other than writeback): no `seq` of its own.
    direct: bool,
    buf: Option<DmaBuf>,
}

struct Live {
    cfg: Config,
    h: Harness,
    tap: Arc<Tap>,
    disk: Arc<Disk>,
    /// The origin disk's identity (the superblock records it; a restart keeps it).
    uuid: uuid::Uuid,
    /// Name of the bdev the cache uses as origin (the disk, or its error bdev).
    origin: String,
    names: (String, String, String),
    pc: Option<Bdev>,
    /// Unregistered last to first.
    bases: Vec<Bdev>,
    cache: Arc<Cache>,
    chans: Vec<Option<(BdevDesc, BdevChannel)>>,
    oracle: Oracle,
    inflight: BTreeMap<usize, Op>,
    next_id: usize,
    rng: StdRng,
    /// Failures armed on the error bdev so far, and armed ones dropped by a later arming.
    faults_armed: u64,
    faults_dropped: u64,
    /// Restarts from a cut so far (the pmem's epoch).
    epoch: u32,
    /// Check only this cut (the others are taken, and restarted from, as usual).
    only: Option<CutAt>,
}

/// What a workload did, for the test's totals.
#[derive(Default, Debug, Clone, Copy)]
struct Totals {
    workloads: u64,
    cuts: u64,
    nested: u64,
    dirty_after: u64,
    restarts: u64,
    gc_runs: u64,
    gc_segments_freed: u64,
    writeback_batches: u64,
    deferred_writes: u64,
    origin_errors: u64,
    faults_armed: u64,
}

/// The bdevs of a live cache.
struct World {
    origin: String,
    bases: Vec<Bdev>,
    pc: Bdev,
    cache: Arc<Cache>,
}

/// Registers `disk` (as `names.2` with `uuid`, behind an error bdev for `OriginFaults`) and a
/// pmem bdev over `tap`, and creates the cache (formatting a blank pmem, else replaying).
fn build_world(
    cfg: &Config,
    h: &Harness,
    names: &(String, String, String),
    uuid: uuid::Uuid,
    tap: &Arc<Tap>,
    disk: &Arc<Disk>,
) -> Result<World, String> {
    let disk_bdev = disk.register(&names.2, uuid).map_err(|e| e.to_string())?;
    let mut bases = vec![disk_bdev];
    let origin = if cfg.profile == Profile::OriginFaults {
        let ee = bdev::error_inject::create(ErrorCreateParams::new(&names.2))
            .map_err(|e| e.to_string())?
            .ok_or("no error bdev")?;
        let n = ee.name().to_string();
        bases.push(ee);
        n
    } else {
        names.2.clone()
    };
    let pm: Arc<dyn Pmem> = tap.clone();
    bases.insert(
        0,
        bdev::pmem::create_with(&names.1, pm, 4096).map_err(|e| e.to_string())?,
    );
    let p = params(cfg, &names.0, &names.1, &origin);
    let pc = h
        .run_on(0, || cache::vbdev::create(p))
        .map_err(|e| format!("creating the cache (replay) failed: {e}"))?;
    let cache = cache::vbdev::cache_of(&pc).ok_or("not a pcache bdev")?;
    Ok(World {
        origin,
        bases,
        pc,
        cache,
    })
}

/// Deletes a bdev (an error bdev with its configuration, so it can be created again).
fn delete_bdev(h: &Harness, b: Bdev) {
    if b.module() == bdev::error_inject::MODULE {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let name = b.name().to_string();
        drop(b);
        h.run_on(0, || {
            bdev::error_inject::delete(&name, move |r| {
                r.unwrap();
                d.store(true, Ordering::SeqCst);
            })
        });
        for _ in 0..100 {
            h.poll_until_idle(10);
        }
        assert!(done.load(Ordering::SeqCst));
    } else {
        unregister(h, b);
    }
}

impl Live {
    fn new(cfg: Config, tag: &str, only: Option<CutAt>) -> Live {
        let h = harness(cfg.threads);
        let tap = Arc::new(Tap::new(Arc::new(CrashPmem::new(cfg.pmem_bytes))));
        let disk = Disk::with_cache(
            initial_image(cfg.bs, cfg.blocks),
            cfg.bs,
            cfg.write_zeroes,
            cfg.origin_cache,
        );
        if cfg.fail_nth > 0 {
            // The N-th origin write fails; every other run the one after it too (a retry may
            // fail again); every third run a flush as well.
            let n = cfg.fail_nth;
            disk.fail_write(n);
            if n.is_multiple_of(2) {
                disk.fail_write(n + 1);
            }
            if n.is_multiple_of(3) {
                disk.fail_flush(1 + n / 3);
            }
        }
        let base = format!("{tag}_{}", cfg.seed);
        let names = (
            format!("{base}_c"),
            format!("{base}_p"),
            format!("{base}_o"),
        );
        let uuid = uuid::Uuid::from_u128(u128::from(cfg.seed) | (0xCC << 64));
        install_cut_hooks(&tap, &disk, Plan::new(cfg.seed, 0, cfg.cut_gap));
        let w = build_world(&cfg, &h, &names, uuid, &tap, &disk).unwrap();
        let mut live = Live {
            oracle: Oracle::new(cfg.blocks),
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            h,
            tap,
            disk,
            uuid,
            origin: w.origin,
            names,
            pc: Some(w.pc),
            bases: w.bases,
            cache: w.cache,
            chans: Vec::new(),
            inflight: BTreeMap::new(),
            next_id: 1,
            faults_armed: 0,
            faults_dropped: 0,
            epoch: 0,
            only,
        };
        live.open_channels();
        live
    }

    fn open_channels(&mut self) {
        self.chans = (0..self.cfg.threads)
            .map(|t| {
                let d = BdevDesc::open(&self.names.0, true, |_| {}).unwrap();
                let ch = self.h.run_on(t, || d.get_io_channel()).unwrap();
                Some((d, ch))
            })
            .collect();
    }

    fn shape(&self) -> Shape {
        Shape { cfg: self.cfg }
    }

    fn id(&mut self) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A range of `n` blocks no write in flight touches (a third of the time in a hot spot).
    fn free_range(&mut self, n: u64) -> Option<u64> {
        let blocks = self.cfg.blocks;
        for _ in 0..8 {
            let span = if self.rng.random_bool(0.3) {
                64.min(blocks)
            } else {
                blocks
            };
            let lba = self.rng.random_range(0..=span.saturating_sub(n));
            let busy = self.inflight.values().any(|o| {
                matches!(o.kind, Kind::Write { .. } | Kind::Zero { .. })
                    && o.lba < lba + n
                    && lba < o.lba + o.n
            });
            if !busy && lba + n <= blocks {
                return Some(lba);
            }
        }
        None
    }

    /// Versions for a write or zeroing of `lba..lba + n` by op `id`, submitted at event `ev`.
    fn add_versions(&mut self, id: usize, lba: u64, n: u64, zero: bool, ev: u64) -> Vec<u32> {
        (lba..lba + n)
            .map(|b| {
                let h = &mut self.oracle.blocks[b as usize];
                h.v.push(Version {
                    wid: id as u32,
                    zero,
                    submit: ev,
                    complete: NEVER,
                    seq_hi: NEVER,
                });
                (h.v.len() - 1) as u32
            })
            .collect()
    }

    fn submit(&mut self, t: usize, kind: Kind) -> bool {
        let bs = self.cfg.bs;
        let (lba, n) = match kind {
            Kind::Write { .. } => {
                let n = self.rng.random_range(1..=16u64);
                let Some(lba) = self.free_range(n) else {
                    return false;
                };
                (lba, n)
            }
            Kind::Zero { .. } => {
                let n = self.rng.random_range(1..=32u64);
                let Some(lba) = self.free_range(n) else {
                    return false;
                };
                (lba, n)
            }
            Kind::Read => {
                let n = self.rng.random_range(1..=32u64).min(self.cfg.blocks);
                (self.rng.random_range(0..=self.cfg.blocks - n), n)
            }
            Kind::Flush => (0, self.cfg.blocks),
        };
        let id = self.id();
        let buf = match kind {
            Kind::Write { .. } => {
                let mut b = DmaBuf::new(n as usize * bs, 4096).unwrap();
                for (i, c) in b.as_mut_slice().chunks_exact_mut(bs).enumerate() {
                    fill_block(c, lba + i as u64, id as u32);
                }
                Some(b)
            }
            Kind::Read => {
                let mut b = DmaBuf::new(n as usize * bs, 4096).unwrap();
                b.as_mut_slice().fill(0x5A);
                Some(b)
            }
            _ => None,
        };
        // Sometimes several segments, cut at 512-byte boundaries.
        let iovs: Vec<IoVec> = match &buf {
            Some(b) if self.rng.random_bool(0.25) && b.len() > 512 => {
                let cut = self.rng.random_range(1..b.len() / 512) * 512;
                // SAFETY: both halves lie in `b`, which the op keeps until it completes.
                unsafe {
                    vec![
                        IoVec::new(b.as_mut_ptr(), cut),
                        IoVec::new(b.as_mut_ptr().add(cut), b.len() - cut),
                    ]
                }
            }
            Some(b) => vec![iov(b)],
            None => Vec::new(),
        };
        let seq0 = self.cache.next_seq();
        let deferred0 = self.cache.gc().deferred();
        let origin_writes0 = self.disk.io_counts().0;
        let ev = tick();
        let vidx = match kind {
            Kind::Write { .. } => self.add_versions(id, lba, n, false, ev),
            Kind::Zero { .. } => self.add_versions(id, lba, n, true, ev),
            _ => Vec::new(),
        };
        let ch = &self.chans[t].as_ref().unwrap().1;
        let ctx = IoCtx::Word(id);
        let r = self.h.run_on(t, || match kind {
            Kind::Write { fua } => ch.write(&iovs, lba, n, IoFlags { fua }, live_done, ctx),
            Kind::Zero { unmap: true } => ch.unmap(lba, n, live_done, ctx),
            Kind::Zero { unmap: false } => ch.write_zeroes(lba, n, live_done, ctx),
            Kind::Read => ch.read(&iovs, lba, n, live_done, ctx),
            Kind::Flush => ch.flush(0, n, live_done, ctx),
        });
        if let Err(e) = r {
            panic!("submitting {kind:?} at {lba}+{n}: {}", e.error);
        }
        let deferred = self.cache.gc().deferred() > deferred0;
        // Writeback reaches the origin from its poller only: an origin write during the
        // submission is this op going around the cache.
        let direct = self.disk.io_counts().0 != origin_writes0;
        if !deferred && !direct && !vidx.is_empty() {
            // Every key of this op took its seq during the submission.
            let hi = self.cache.next_seq() - 1;
            assert!(hi >= seq0, "a write took no sequence number");
            for (i, &v) in vidx.iter().enumerate() {
                self.oracle.blocks[(lba + i as u64) as usize].v[v as usize].seq_hi = hi;
            }
        }
        self.inflight.insert(
            id,
            Op {
                kind,
                lba,
                n,
                submit: ev,
                vidx,
                deferred,
                direct,
                buf,
            },
        );
        true
    }

    /// Applies the completions the callbacks recorded.
    fn process_done(&mut self) {
        let done = DONE.with(|d| std::mem::take(&mut *d.borrow_mut()));
        for (id, ok, ev) in done {
            let op = self
                .inflight
                .remove(&id)
                .unwrap_or_else(|| panic!("completion of unknown op {id}"));
            assert!(ok, "{:?} at {}+{} failed", op.kind, op.lba, op.n);
            match op.kind {
                Kind::Write { .. } | Kind::Zero { .. } => {
                    let fua = op.kind == Kind::Write { fua: true };
                    let seq_hi = self.cache.next_seq() - 1;
                    for (i, &v) in op.vidx.iter().enumerate() {
                        let h = &mut self.oracle.blocks[(op.lba + i as u64) as usize];
                        let ver = &mut h.v[v as usize];
                        ver.complete = ev;
                        if op.deferred && !op.direct {
                            ver.seq_hi = seq_hi;
                        }
                        if fua || self.cfg.durable {
                            h.make_durable(ev, v as usize);
                        }
                    }
                }
                Kind::Flush => {
                    for h in &mut self.oracle.blocks {
                        let idx = h.newest_completed_before(op.submit);
                        h.make_durable(ev, idx);
                    }
                }
                Kind::Read => {
                    let bs = self.cfg.bs;
                    let data = op.buf.as_ref().unwrap().as_slice();
                    for i in 0..op.n {
                        let b = op.lba + i;
                        let h = &self.oracle.blocks[b as usize];
                        let id = identify(&data[i as usize * bs..(i as usize + 1) * bs], b);
                        let (lo, hi) =
                            (h.newest_completed_before(op.submit), h.newest_submitted(ev));
                        assert!(
                            h.matches(&id, lo, hi),
                            "live read of block {b} returned {id:?}, allowed versions \
                             {lo}..={hi}; {}",
                            h.describe()
                        );
                    }
                }
            }
        }
    }

    fn fail(&self, at: CutAt, ev: u64, mode: &str, err: &str) -> ! {
        panic!(
            "CRASH CONSISTENCY FAILURE ({:?} seed {}, cut {at} [{mode} image], oracle event \
             {ev}): {err}\nreproduce: PCACHE_CRASH_SEED={} PCACHE_CRASH_CUT={at} cargo test \
             --release -p cache --test crash_consistency {}",
            self.cfg.profile,
            self.cfg.seed,
            self.cfg.seed,
            test_name(self.cfg.profile)
        );
    }

    /// Checks the cuts the hooks took; now and then the workload then carries on from one of
    /// them (a restart after the power cut) instead of from where it is.
    fn check_cuts(&mut self, checker: &mut Checker) {
        let cuts = CUTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let sh = self.shape();
        for cut in cuts {
            let (at, ev, mode) = (cut.at, cut.ev, cut.mode);
            let restart = self.cfg.restart_every > 0
                && self.epoch < self.cfg.max_restarts
                && cut_rng(self.cfg.seed ^ 0x5E57, at).random_range(0..self.cfg.restart_every) == 0;
            let keep = restart.then(|| (cut.image.clone(), cut.origin.clone()));
            if self.only.is_none_or(|o| o == at) {
                let r = catch_unwind(AssertUnwindSafe(|| checker.check(&sh, &self.oracle, cut)));
                let err = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(p) => Some(format!("panicked: {}", panic_text(&p))),
                };
                if let Some(e) = err {
                    self.fail(at, ev, mode, &e);
                }
            }
            if let Some((image, origin)) = keep {
                // The cuts after this one belong to the timeline being abandoned.
                CUTS.with(|c| c.borrow_mut().clear());
                self.restart(at, ev, image, origin);
                return;
            }
        }
    }

    /// Lets what is in flight finish without telling the oracle (the timeline is being
    /// abandoned), checks the origin error count, and deletes the cache and its bdevs.
    fn abandon(&mut self) {
        for _ in 0..50_000 {
            self.h.poll_until_idle(50);
            for (id, _, _) in DONE.with(|d| std::mem::take(&mut *d.borrow_mut())) {
                self.inflight.remove(&id);
            }
            if self.inflight.is_empty() {
                break;
            }
            self.h.advance_us(2_000);
        }
        assert!(
            self.inflight.is_empty(),
            "I/O stuck before a restart: {}",
            cache::rpc::stats_json(&self.cache)
        );
        self.check_origin_errors();
        self.chans.clear();
        if let Some(pc) = self.pc.take() {
            unregister(&self.h, pc);
        }
        for b in self.bases.drain(..).rev() {
            delete_bdev(&self.h, b);
        }
    }

    /// Failures the origin delivered (the error bdev's: armed, less those replaced or never
    /// reached; the disk's own), which must be exactly what the cache counted.
    fn check_origin_errors(&self) -> u64 {
        let mut injected = self.disk.failed();
        if self.cfg.profile == Profile::OriginFaults {
            let left: u64 = [IoType::Write, IoType::Flush, IoType::Unmap]
                .iter()
                .filter_map(|&t| bdev::error_inject::injections_left(&self.origin, t))
                .map(u64::from)
                .sum();
            injected += self.faults_armed - self.faults_dropped - left;
        }
        let counted = stat(&self.cache, "origin_errors");
        assert_eq!(
            counted,
            injected,
            "origin_errors does not count the origin's failures: {}",
            cache::rpc::stats_json(&self.cache)
        );
        injected
    }

    /// Carries on from cut `at` (taken at oracle event `ev`): the pmem and origin from its
    /// images, the cache re-created (replay), every block checked, and the oracle rolled back
    /// to what survived.
    fn restart(&mut self, at: CutAt, ev: u64, image: Vec<u8>, origin: Vec<u8>) {
        remove_cut_hooks(&self.tap);
        self.abandon();
        self.epoch += 1;
        self.faults_armed = 0;
        self.faults_dropped = 0;
        let tap = Arc::new(Tap::new(Arc::new(CrashPmem::from_image(image))));
        let disk = Disk::with_cache(
            origin,
            self.cfg.bs,
            self.cfg.write_zeroes,
            self.cfg.origin_cache,
        );
        let plan = Plan::new(self.cfg.seed, self.epoch, self.cfg.cut_gap);
        install_cut_hooks(&tap, &disk, plan);
        let w = build_world(&self.cfg, &self.h, &self.names, self.uuid, &tap, &disk)
            .unwrap_or_else(|e| self.fail(at, ev, "restart", &e));
        (self.tap, self.disk) = (tap, disk);
        (self.origin, self.bases, self.cache) = (w.origin, w.bases, w.cache);
        self.pc = Some(w.pc);
        self.open_channels();
        let ch = self.chans[0].as_ref().unwrap().1.clone();
        let data = read_all(&self.h, &ch, self.cfg.bs, self.cfg.blocks)
            .unwrap_or_else(|e| self.fail(at, ev, "restart", &e));
        drop(ch);
        let seq = self.cache.next_seq().saturating_sub(1);
        if let Err(e) = self.oracle.roll_back(&data, self.cfg.bs, ev, tick(), seq) {
            self.fail(at, ev, "restart", &e);
        }
    }

    fn step(&mut self, checker: &mut Checker) {
        let t = self.rng.random_range(0..self.cfg.threads);
        match self.rng.random_range(0..100) {
            0..=44 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    if self.inflight.len() >= 24 {
                        break;
                    }
                    let kind = match self.rng.random_range(0..100) {
                        0..=49 => Kind::Write { fua: false },
                        50..=59 => Kind::Write { fua: true },
                        60..=65 => Kind::Zero {
                            unmap: self.rng.random_bool(0.5),
                        },
                        66..=91 => Kind::Read,
                        _ => Kind::Flush,
                    };
                    if !self.submit(t, kind) {
                        self.submit(t, Kind::Read);
                    }
                }
            }
            45..=74 => {
                for _ in 0..self.rng.random_range(1..=3) {
                    self.h.poll_thread(t);
                }
            }
            75..=84 => {
                self.h.poll_until_idle(4);
            }
            85..=96 => {
                let us = self.rng.random_range(100..=40_000);
                self.h.advance_us(us);
                self.h.poll_thread(0);
            }
            97 => {
                self.h.run_on(0, || self.cache.flush_start());
            }
            98 => self.storm(checker),
            _ if self.cfg.profile == Profile::Modes => {
                let mode = pick_mode(&mut self.rng);
                let o: cache::params::SetOptionsParams =
                    serde_json::from_value(serde_json::json!({"name": self.names.0, "mode": mode}))
                        .unwrap();
                self.h
                    .run_on(0, || self.cache.set_options(&o))
                    .unwrap_or_else(|e| panic!("switching to {mode}: {e}"));
            }
            _ => {
                if self.cfg.profile == Profile::OriginFaults {
                    let (io_type, t) = match self.rng.random_range(0..4) {
                        0 | 1 => (InjectIoType::Write, IoType::Write),
                        2 => (InjectIoType::Flush, IoType::Flush),
                        _ => (InjectIoType::Unmap, IoType::Unmap),
                    };
                    let num = self.rng.random_range(1..=3);
                    // Arming replaces what is left of an earlier injection of the type.
                    let left = bdev::error_inject::injections_left(&self.origin, t).unwrap();
                    bdev::error_inject::inject_error(&ErrorInjectParams::new(
                        &self.origin,
                        io_type,
                        ErrorType::Failure,
                        num,
                    ))
                    .unwrap();
                    self.faults_armed += u64::from(num);
                    self.faults_dropped += u64::from(left);
                }
            }
        }
    }

    /// A burst of writes from the threads other than the management one (which runs writeback
    /// and GC), polling only them: the cache fills and writes wait for space.
    fn storm(&mut self, checker: &mut Checker) {
        let writers = self.cfg.threads - 1;
        // Writes from the writing threads only: in durable mode each seals its own key-set
        // while the management lane's open key-set (promotions) spans them all.
        let first = usize::from(writers > 0);
        for _ in 0..self.rng.random_range(50..=200) {
            let t = self.rng.random_range(first..=writers);
            if self.inflight.len() < 24 {
                let fua = self.rng.random_bool(0.1);
                self.submit(t, Kind::Write { fua });
            }
            self.h.poll_thread(t);
            self.process_done();
            self.check_cuts(checker);
        }
    }

    /// Runs until nothing is in flight (moving the clock so deferred writes get space).
    fn drain(&mut self, checker: &mut Checker) {
        for _ in 0..50_000 {
            self.h.poll_until_idle(50);
            self.process_done();
            self.check_cuts(checker);
            if self.inflight.is_empty() {
                return;
            }
            self.h.advance_us(2_000);
        }
        panic!(
            "I/O stuck (writes waiting for space while GC drops nothing?): {:?}; {}; \
             key-sets from each lane's key tail (min seq, max seq): {}",
            self.inflight
                .values()
                .map(|o| (o.kind, o.lba, o.n))
                .collect::<Vec<_>>(),
            cache::rpc::stats_json(&self.cache),
            key_log_summary(&self.cache)
        );
    }

    /// The end of a workload: exact contents, full writeback, clean delete and re-create.
    fn finish(mut self, checker: &mut Checker, totals: &mut Totals) {
        // No restarts from here on: the checks below follow this timeline.
        self.cfg.restart_every = 0;
        self.drain(checker);
        let (bs, blocks) = (self.cfg.bs, self.cfg.blocks);
        let injected = self.check_origin_errors();
        if self.cfg.profile == Profile::OriginFaults {
            bdev::error_inject::inject_error(&ErrorInjectParams::new(
                &self.origin,
                InjectIoType::Clear,
                ErrorType::Failure,
                0,
            ))
            .unwrap();
        }
        let ch = self.chans[0].as_ref().unwrap().1.clone();
        let data = read_all(&self.h, &ch, bs, blocks).unwrap();
        self.oracle
            .check_exact(&data, bs, "after the workload")
            .unwrap();
        drop(ch);
        let disk = self.disk.clone();
        let (cache, h) = (self.cache.clone(), &mut self.h);
        flush_all(h, &cache).unwrap();
        self.process_done();
        disk.with_contents(|o| self.oracle.check_exact(o, bs, "origin after writeback"))
            .unwrap();
        let s = cache::rpc::stats_json(&self.cache);
        let g = |k: &str| s[k].as_u64().unwrap_or(0);
        totals.workloads += 1;
        totals.gc_runs += g("gc_runs");
        totals.gc_segments_freed += g("gc_segments_freed");
        totals.writeback_batches += g("writeback_batches");
        totals.deferred_writes += g("deferred_writes");
        totals.origin_errors += g("origin_errors");
        totals.faults_armed += injected;
        self.check_cuts(checker);

        // Clean delete and re-create (cuts keep being taken: shutdown and reattach are crash
        // points too).
        self.chans.clear();
        let pc = self.pc.take().unwrap();
        unregister(&self.h, pc);
        let p = params(&self.cfg, &self.names.0, &self.names.1, &self.origin);
        let pc = self.h.run_on(0, || cache::vbdev::create(p)).unwrap();
        self.cache = cache::vbdev::cache_of(&pc).unwrap();
        self.pc = Some(pc);
        self.open_channels();
        let ch = self.chans[0].as_ref().unwrap().1.clone();
        let data = read_all(&self.h, &ch, bs, blocks).unwrap();
        self.oracle
            .check_exact(&data, bs, "after a clean re-create")
            .unwrap();
        drop(ch);
        self.chans.clear();
        unregister(&self.h, self.pc.take().unwrap());
        remove_cut_hooks(&self.tap);
        self.check_cuts(checker);
        for b in self.bases.drain(..).rev() {
            delete_bdev(&self.h, b);
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn test_name(p: Profile) -> &'static str {
    match p {
        Profile::Mixed => "crash_points_writes_flushes_writeback_and_gc",
        Profile::SmallBlocks => "crash_points_small_blocks_and_durable_mode",
        Profile::OriginFaults => "crash_points_with_origin_failures",
        Profile::OriginSweep => "origin_failure_at_each_write_ordinal_loses_nothing",
        Profile::Modes => "crash_points_in_every_cache_mode",
    }
}

/// Crash points the whole default run explores, and each test's share (in percent).
const DEFAULT_POINTS: u64 = 10_000;
const LONG_POINTS: u64 = 200_000;

fn budget(share_percent: u64) -> u64 {
    let total = std::env::var("PCACHE_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::var_os("PCACHE_LONG").is_some() {
            LONG_POINTS
        } else {
            DEFAULT_POINTS
        });
    (total * share_percent).div_ceil(100)
}

/// Tunes glibc's allocator for this test binary: crash images are ~17 MiB each, and served from
/// a heap that is not trimmed (rather than from a fresh mapping each time) they mostly cost a
/// copy instead of a copy and thousands of page faults.
fn tune_malloc() {
    // SAFETY: mallopt only changes glibc allocator parameters; any value is memory safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Runs one workload and its cuts; a failure names the seed (and cut) to reproduce it.
fn run_one(
    cfg: Config,
    tag: &str,
    only_cut: Option<CutAt>,
    checker: &mut Checker,
    totals: &mut Totals,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut live = Live::new(cfg, tag, only_cut);
        for _ in 0..cfg.steps {
            live.step(checker);
            live.process_done();
            live.check_cuts(checker);
        }
        totals.restarts += u64::from(live.epoch);
        live.finish(checker, totals);
    }));
    if let Err(p) = r {
        let msg = panic_text(&p);
        if msg.starts_with("CRASH CONSISTENCY FAILURE") {
            panic!("{msg}");
        }
        panic!(
            "workload failed ({:?} seed {}, config {cfg:?}): {msg}\nreproduce: \
             PCACHE_CRASH_SEED={} cargo test --release -p cache --test crash_consistency {}",
            cfg.profile,
            cfg.seed,
            cfg.seed,
            test_name(cfg.profile)
        );
    }
}

/// Runs workloads of `profile` (seeds from `first_seed` on) until `points` cuts were checked.
fn run_profile(profile: Profile, first_seed: u64, share_percent: u64) -> Totals {
    let tag = match profile {
        Profile::Mixed => "ccm",
        Profile::SmallBlocks => "ccs",
        Profile::OriginFaults => "ccf",
        Profile::OriginSweep => "ccn",
        Profile::Modes => "ccd",
    };
    let only_seed: Option<u64> = std::env::var("PCACHE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let only_cut = std::env::var("PCACHE_CRASH_CUT")
        .ok()
        .map(|v| parse_cut(&v).expect("PCACHE_CRASH_CUT is before:<fence> or after:<fence>"));
    let points = if only_seed.is_some() {
        0
    } else {
        budget(share_percent)
    };
    let started = Instant::now();
    let mut checker = Checker::new(&format!("{tag}chk"));
    let mut totals = Totals::default();
    let mut seed = only_seed.unwrap_or(first_seed);
    loop {
        run_one(
            Config::new(profile, seed),
            tag,
            only_cut,
            &mut checker,
            &mut totals,
        );
        totals.cuts = checker.checked;
        if only_seed.is_some() || totals.cuts >= points {
            break;
        }
        seed += 1;
    }
    totals.nested = checker.nested;
    totals.dirty_after = checker.dirty_after;
    let _ = writeln!(
        std::io::stderr(),
        "crash_consistency {profile:?}: {} crash points explored ({} with a second cut during \
         recovery writeback, {} with dirty data to replay, {} carried on from) over {} workloads \
         in {:.1} s; live: \
         {} GC rounds, {} segments freed, {} writeback batches, {} deferred writes, {} origin \
         errors ({} failures injected)",
        totals.cuts,
        totals.nested,
        totals.dirty_after,
        totals.restarts,
        totals.workloads,
        started.elapsed().as_secs_f64(),
        totals.gc_runs,
        totals.gc_segments_freed,
        totals.writeback_batches,
        totals.deferred_writes,
        totals.origin_errors,
        totals.faults_armed,
    );
    let phases = PHASES.with(|p| {
        p.borrow()
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    let _ = writeln!(
        std::io::stderr(),
        "crash_consistency {profile:?}: time in {phases}"
    );
    if let Some(c) = only_cut {
        assert!(totals.cuts > 0, "seed {seed}: no cut {c} was taken");
    }
    if only_seed.is_none() {
        assert!(
            totals.cuts >= points,
            "{} of {points} crash points",
            totals.cuts
        );
    }
    totals
}

#[test]
fn crash_points_writes_flushes_writeback_and_gc() {
    tune_malloc();
    let t = run_profile(Profile::Mixed, 1, 40);
    if std::env::var_os("PCACHE_CRASH_SEED").is_none() {
        // The workloads exercised what they are meant to.
        assert!(t.gc_runs > 0 && t.gc_segments_freed > 0, "{t:?}");
        assert!(t.writeback_batches > 0 && t.deferred_writes > 0, "{t:?}");
        assert!(t.nested > 0 && t.dirty_after > 0, "{t:?}");
    }
}

#[test]
fn crash_points_small_blocks_and_durable_mode() {
    tune_malloc();
    let t = run_profile(Profile::SmallBlocks, 1_000, 25);
    if std::env::var_os("PCACHE_CRASH_SEED").is_none() {
        assert!(t.gc_runs > 0 && t.writeback_batches > 0, "{t:?}");
    }
}

#[test]
fn crash_points_with_origin_failures() {
    tune_malloc();
    let t = run_profile(Profile::OriginFaults, 2_000, 15);
    if std::env::var_os("PCACHE_CRASH_SEED").is_none() {
        assert!(
            t.faults_armed > 0 && t.origin_errors == t.faults_armed,
            "{t:?}"
        );
    }
}

/// The origin fails its N-th write (and in some runs the next one, or a flush), for N = 1, 2, …,
/// while writeback and GC run and writes wait for space: every run ends with everything readable,
/// flush_start completing with the origin holding exactly the newest data, and `origin_errors`
/// counting exactly the failures the origin returned.
#[test]
fn origin_failure_at_each_write_ordinal_loses_nothing() {
    tune_malloc();
    let mut checker = Checker::new("ccnchk");
    let mut totals = Totals::default();
    let runs: u64 = if std::env::var_os("PCACHE_LONG").is_some() {
        64
    } else {
        16
    };
    let only: Option<u64> = std::env::var("PCACHE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    for n in 1..=runs {
        let seed = 3_000 + n;
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let before = totals.origin_errors;
        let cfg = Config {
            fail_nth: n,
            ..Config::new(Profile::OriginSweep, seed)
        };
        run_one(cfg, "ccn", None, &mut checker, &mut totals);
        assert!(
            totals.origin_errors > before,
            "seed {seed}: the origin's write {n} never failed (too few origin writes?)"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "crash_consistency OriginSweep: {} runs, {} origin errors, {} writeback batches, {} GC \
         rounds, {} deferred writes",
        totals.workloads,
        totals.origin_errors,
        totals.writeback_batches,
        totals.gc_runs,
        totals.deferred_writes
    );
    assert!(
        totals.gc_runs > 0 && totals.deferred_writes > 0,
        "{totals:?}"
    );
}

/// Regression (cache/src/gc.rs, `Engine::read_window` / `cut`): GC reads a bounded number of
/// key-sets of each lane per round and needs a cut `P` below every truncated lane's next key.
/// When another lane's oldest key-set spans more `seq`s than a lane's window covers (or two
/// lanes' small key-sets interleave all through their windows), a round finds no cut; GC used
/// to retry the same windows forever and, once the cache was full, writes waited for ever. It
/// now reads further (the window doubles) until it finds the cut.
///
/// Here: thread 0 reads a block (its promotion is a clean key left in thread 0's open key-set),
/// thread 1 makes 100 FUA writes (one key-set each), thread 0 reads another block (a second key
/// in the same open key-set, which so spans all 100), then thread 1 writes until the cache is
/// full. The random workloads met the same with durable mode and write storms (e.g. seed 1004
/// of `crash_points_small_blocks_and_durable_mode`).
#[test]
fn gc_livelock_on_a_key_set_wider_than_the_window() {
    tune_malloc();
    let bs = 4096usize;
    let blocks = 4096u64;
    let mut h = harness(2);
    let disk = Disk::new(initial_image(bs, blocks), bs, true);
    let o = disk
        .register("ccl_o", uuid::Uuid::from_u128(0x11ce))
        .unwrap();
    let p =
        bdev::pmem::create_with("ccl_p", Arc::new(RamPmem::new(vec![0; 17 << 20])), 4096).unwrap();
    let cfg = Config {
        gc_percent: 0,
        data_crc: false,
        durable: false,
        dirty_target: 0,
        ..Config::new(Profile::Mixed, 0)
    };
    let pc = h
        .run_on(0, || {
            cache::vbdev::create(params(&cfg, "ccl_c", "ccl_p", "ccl_o"))
        })
        .unwrap();
    let c = cache::vbdev::cache_of(&pc).unwrap();
    let open = |t: usize| {
        let d = BdevDesc::open("ccl_c", true, |_| {}).unwrap();
        let ch = h.run_on(t, || d.get_io_channel()).unwrap();
        (d, ch)
    };
    let (d0, ch0) = open(0);
    let (d1, ch1) = open(1);
    let buf = DmaBuf::new(bs, 4096).unwrap();
    let io = |t: usize, ch: &BdevChannel, write: Option<(u64, bool)>, read: u64| {
        h.run_on(t, || match write {
            Some((lba, fua)) => ch
                .write(
                    &[iov(&buf)],
                    lba,
                    1,
                    IoFlags { fua },
                    record,
                    IoCtx::Word(1),
                )
                .unwrap(),
            None => ch
                .read(&[iov(&buf)], read, 1, record, IoCtx::Word(1))
                .unwrap(),
        });
        // Only this thread runs until the I/O completes.
        for _ in 0..1000 {
            h.poll_thread(t);
            let done = wait_nonblocking();
            if !done.is_empty() {
                assert!(done.iter().all(|d| d.1));
                return;
            }
        }
        panic!("I/O on thread {t} did not complete");
    };
    io(0, &ch0, None, 0);
    for i in 0..100 {
        io(1, &ch1, Some((100 + i, true)), 0);
    }
    io(0, &ch0, None, 1);
    // Fill the cache (1.5× its data space) with everything running.
    for i in 0..2400u64 {
        h.run_on(1, || {
            ch1.write(
                &[iov(&buf)],
                200 + i % 3000,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(2),
            )
            .unwrap()
        });
        let mut done = false;
        for _ in 0..2000 {
            h.poll_until_idle(10);
            if !wait_nonblocking().is_empty() {
                done = true;
                break;
            }
            h.advance_us(1_000);
        }
        assert!(
            done,
            "write {i} waits for space forever: {}\n{}",
            cache::rpc::stats_json(&c),
            key_log_summary(&c)
        );
    }
    drop((ch0, d0, ch1, d1, c));
    unregister(&h, pc);
    unregister(&h, p);
    unregister(&h, o);
}

/// The completions recorded so far (common::record), without polling.
fn wait_nonblocking() -> Vec<(usize, bool)> {
    common::take_done()
}

/// The same crash points with the cache in every mode: writethrough, writearound and
/// passthrough send writes to the origin (and drop or refresh cached copies), writeback keeps
/// them; the mode changes at random while the workload runs (leaving writeback cleans the cache
/// through the log). The oracle's promise is the same in every mode: a FLUSH makes every write
/// completed before it durable, a FUA write is durable when it completes.
/// The origin has a volatile write cache: writes around the cache are durable only once a FLUSH
/// (or FUA) reaches it.
#[test]
fn crash_points_in_every_cache_mode() {
    tune_malloc();
    let t = run_profile(Profile::Modes, 4_000, 20);
    if std::env::var_os("PCACHE_CRASH_SEED").is_none() {
        assert!(t.writeback_batches > 0, "{t:?}");
    }
}

/// A small cache for the focused reproducers: one thread, the given mode, GC all but idle.
struct Mini {
    h: Harness,
    cfg: Config,
    tap: Arc<Tap>,
    disk: Arc<Disk>,
    w: World,
    d: BdevDesc,
    ch: BdevChannel,
}

impl Mini {
    fn new(tag: &str, mode: &'static str) -> Mini {
        let cfg = Config {
            threads: 1,
            // GC must not reclaim the keys of interest before the cut.
            gc_percent: 90,
            data_crc: true,
            durable: false,
            mode,
            ..Config::new(Profile::Mixed, 77)
        };
        let h = harness(1);
        let tap = Arc::new(Tap::new(Arc::new(CrashPmem::new(cfg.pmem_bytes))));
        let disk = Disk::new(initial_image(cfg.bs, cfg.blocks), cfg.bs, true);
        let names = (format!("{tag}_c"), format!("{tag}_p"), format!("{tag}_o"));
        let uuid = uuid::Uuid::from_u128(
            0x5eed_0000 ^ u128::from(tag.bytes().fold(0u64, |h, b| splitmix(h ^ u64::from(b)))),
        );
        let w = build_world(&cfg, &h, &names, uuid, &tap, &disk).unwrap();
        let d = BdevDesc::open(&names.0, true, |_| {}).unwrap();
        let ch = h.run_on(0, || d.get_io_channel()).unwrap();
        Mini {
            h,
            cfg,
            tap,
            disk,
            w,
            d,
            ch,
        }
    }

    fn io(&self, f: impl FnOnce(&BdevChannel) -> bdev::SubmitResult) {
        self.h.run_on(0, || f(&self.ch)).unwrap();
        assert_eq!(wait(&self.h, 1), vec![(7, true)]);
    }

    fn write(&self, lba: u64, wid: u32) {
        let mut b = DmaBuf::new(self.cfg.bs, 4096).unwrap();
        fill_block(b.as_mut_slice(), lba, wid);
        self.io(|ch| {
            ch.write(
                &[iov(&b)],
                lba,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(7),
            )
        });
    }

    fn read(&self, lba: u64) -> Ident {
        let b = DmaBuf::new(self.cfg.bs, 4096).unwrap();
        self.io(|ch| ch.read(&[iov(&b)], lba, 1, record, IoCtx::Word(7)));
        identify(b.as_slice(), lba)
    }

    fn flush(&self) {
        self.io(|ch| ch.flush(0, 1, record, IoCtx::Word(7)));
    }

    /// Lets writeback run (its seal walk seals every lane's open key-set).
    fn idle(&mut self) {
        for _ in 0..10 {
            self.h.advance_us(200_000);
            self.h.poll_until_idle(100);
        }
    }

    /// A power cut now in which everything written to pmem survives but only what the origin
    /// made durable does; the cache rebuilt from it and `block` read back: (what replay served,
    /// where from, what the origin held).
    fn cut_and_rebuild(self, block: u64) -> (Ident, &'static str, Ident) {
        let image = self.tap.inner.crash_image_all();
        let origin = self.disk.durable_contents();
        let Mini {
            h, cfg, w, d, ch, ..
        } = self;
        drop((ch, d));
        let tag = names_tag(&w.pc);
        unregister(&h, w.pc);
        for b in w.bases.into_iter().rev() {
            delete_bdev(&h, b);
        }
        let mut chk = Checker::new(&format!("{tag}m"));
        let uuid = chk.next_uuid();
        let mut image = image;
        rename_origin(&mut image, uuid);
        let r = chk
            .rebuild(&Shape { cfg }, Arc::new(RamPmem::new(image)), origin, uuid)
            .unwrap();
        let from = block_sources(&r.cache, cfg.blocks)[block as usize];
        let d = BdevDesc::open(r.pc.name(), true, |_| {}).unwrap();
        let ch = chk.h.run_on(0, || d.get_io_channel()).unwrap();
        let bs = cfg.bs;
        let at =
            |data: &[u8]| identify(&data[block as usize * bs..(block as usize + 1) * bs], block);
        let on_origin = at(&r.disk.contents());
        let first = at(&read_all(&chk.h, &ch, bs, cfg.blocks).unwrap());
        drop((ch, d));
        chk.teardown(r);
        (first, from, on_origin)
    }
}

fn names_tag(pc: &Bdev) -> String {
    pc.name().trim_end_matches("_c").to_string()
}

/// Regression (cache/src/io.rs, `flush`): in writethrough, writearound and
/// passthrough modes writes go to the origin, but a FLUSH of the cache bdev only seals the
/// lanes' key-sets: it never flushes the origin, so a write completed before a completed FLUSH
/// is lost when the origin loses its volatile write cache. (The same holds in writeback mode for
/// writes past the sequential cutoff, and for durable mode, whose writes to the origin complete
/// without FUA.) The fix: a FLUSH also flushes the origin (after the lanes are sealed).
#[test]
fn a_flush_makes_writes_around_the_cache_durable() {
    tune_malloc();
    for (i, mode) in ["writethrough", "writearound", "passthrough"]
        .into_iter()
        .enumerate()
    {
        let m = Mini::new(&format!("ccb2{i}"), mode);
        m.write(5, 1);
        m.flush();
        let (got, from, _) = m.cut_and_rebuild(5);
        assert_eq!(
            got,
            Ident::Pat(1),
            "{mode}: a write completed before a completed FLUSH is gone after a power cut \
             (block 5 read from {from})"
        );
    }
}

/// Regression (cache/src/io.rs): a clean key may name data the origin does not hold
/// durably. Writethrough caches a write's data as clean once the origin completes it
/// (`origin_write_done` → `cache_copy`), and a read miss caches what the origin returned
/// (`promote`) — in both cases possibly data still in the origin's volatile write cache. When a
/// seal (here writeback's seal walk) makes that clean key durable and the power then fails,
/// replay trusts the clean copy (the newer data) while the origin holds the older data: the
/// block reads as the newer version until GC evicts the copy, then as the older one, although
/// nothing wrote it. A clean key must only be logged for data the origin holds durably (send
/// those writes with FUA, or flush the origin before sealing such keys).
#[test]
fn a_clean_copy_never_outlives_the_origin_data_it_copies() {
    tune_malloc();
    let mut wrong = Vec::new();
    // Writethrough: the written data is cached clean.
    let mut m = Mini::new("ccb3a", "writethrough");
    m.write(5, 1);
    m.idle();
    wrong.push(("writethrough", m.cut_and_rebuild(5)));
    // Writearound: the write goes around the cache, a read miss then caches the origin's data.
    let mut m = Mini::new("ccb3b", "writearound");
    m.write(5, 1);
    assert_eq!(m.read(5), Ident::Pat(1));
    m.idle();
    wrong.push(("writearound", m.cut_and_rebuild(5)));
    wrong.retain(|(_, (got, from, origin))| *from == "a clean cache copy" && got != origin);
    assert!(
        wrong.is_empty(),
        "after the power cut block 5 reads (from a clean cache copy, what the origin holds): \
         {wrong:?}"
    );
}
