//! Running out of bdev_io under the deterministic harness: queues deeper than every pool through
//! stacked vbdevs and split I/O finish with nothing failed, new submits do not overtake waiters,
//! and a channel that stops completing is reported with its bdev's name. Every test here runs
//! with pools of `POOL` I/Os per channel.

mod common;

use bdev::error_inject::{
    self as error,
    rpc::{ErrorCreateParams, ErrorInjectParams, ErrorType, InjectIoType},
};
use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::passthru::{self, rpc::PassthruCreateParams};
use bdev::{Bdev, BdevChannel, BdevError, DmaBuf, IoCtx, IoFlags};
use common::{done, iov, open, record};
use poller::Harness;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

const POOL: usize = 64;

fn small_pools() {
    bdev::set_options(bdev::BdevOptions {
        bdev_io_cache_size: POOL as u32,
        ..Default::default()
    })
    .unwrap();
}

/// I/O `i` of a closed load: `blocks` blocks at `lba(i)` from buffer `i`; refused for want of
/// an I/O, it waits on the channel and goes again.
struct Load {
    ch: BdevChannel,
    bufs: Vec<DmaBuf>,
    blocks: u64,
    stride: u64,
    offset: u64,
    write: bool,
}

thread_local! {
    static LOAD: RefCell<Option<Rc<Load>>> = const { RefCell::new(None) };
}

fn submit(i: usize) {
    let Some(l) = LOAD.with(|l| l.borrow().clone()) else {
        return;
    };
    let lba = l.offset + i as u64 * l.stride;
    let v = [iov(&l.bufs[i])];
    let r = if l.write {
        l.ch.write(
            &v,
            lba,
            l.blocks,
            IoFlags::default(),
            record,
            IoCtx::Word(i),
        )
    } else {
        l.ch.read(&v, lba, l.blocks, record, IoCtx::Word(i))
    };
    if let Err(e) = r {
        assert!(matches!(e.error, BdevError::NoMemory), "{:?}", e.error);
        l.ch.queue_io_wait(resume, e.ctx);
    }
}

fn resume(ctx: IoCtx) {
    if let IoCtx::Word(i) = ctx {
        submit(i);
    }
}

/// Runs the load's I/Os all at once, checks every one completed and succeeded, and hands the
/// load back (its buffers hold what was read).
fn run_load(h: &Harness, load: Load) -> Rc<Load> {
    let n = load.bufs.len();
    let load = Rc::new(load);
    LOAD.with(|l| *l.borrow_mut() = Some(load.clone()));
    h.run_on(0, || (0..n).for_each(submit));
    h.poll_until_idle(10_000);
    LOAD.with(|l| l.borrow_mut().take());
    let d = done();
    assert_eq!(d.len(), n, "every I/O completed");
    assert!(d.iter().all(|(_, ok)| *ok), "no I/O failed");
    load
}

/// Checks buffer `i` holds the pattern written with `seed ^ i`.
fn check(load: &Load, seed: u8) {
    for (i, b) in load.bufs.iter().enumerate() {
        let want = common::pattern(b.len(), seed ^ i as u8);
        assert_eq!(b.as_slice(), want.as_slice(), "I/O {i}");
    }
}

fn bufs(n: usize, len: usize, seed: u8) -> Vec<DmaBuf> {
    (0..n)
        .map(|i| common::pattern(len, seed ^ i as u8))
        .collect()
}

fn remove(h: &Harness, b: &Bdev) {
    let b = b.clone();
    h.run_on(0, || b.unregister(|r| r.unwrap()));
    h.poll_until_idle(100);
}

#[test]
fn a_queue_four_pools_deep_finishes_through_two_stacked_passthrus() {
    small_pools();
    let h = Harness::new(1);
    let n = 4 * POOL;
    let base = h.run_on(0, || {
        malloc::create(MallocCreateParams::new("pools_base", n as u64, 512)).unwrap()
    });
    let create = |name: &str, on: &str| {
        h.run_on(0, || {
            passthru::create(PassthruCreateParams::new(name, on))
                .unwrap()
                .unwrap()
        })
    };
    let p1 = create("pools_p1", "pools_base");
    let p2 = create("pools_p2", "pools_p1");
    let (desc, ch) = open(&h, "pools_p2", true);
    let (bdesc, bch) = open(&h, "pools_base", false);
    let load = |ch: &BdevChannel, bufs, write| Load {
        ch: ch.clone(),
        bufs,
        blocks: 1,
        stride: 1,
        offset: 0,
        write,
    };
    // Every pool on the way down is a quarter of the queue: the top one fills, the rest wait on
    // it, and the passthrus' children come from the pools below.
    run_load(&h, load(&ch, bufs(n, 512, 0x5a), true));
    check(&run_load(&h, load(&ch, bufs(n, 512, 0), false)), 0x5a);
    check(&run_load(&h, load(&bch, bufs(n, 512, 0), false)), 0x5a);
    drop((bch, bdesc, ch, desc));
    remove(&h, &p2);
    remove(&h, &p1);
    remove(&h, &base);
}

#[test]
fn split_children_do_not_wait_on_the_pool_their_parents_hold() {
    small_pools();
    let h = Harness::new(1);
    let n = 4 * POOL;
    let mut p = MallocCreateParams::new("pools_split", n as u64 * 16 + 16, 512);
    p.optimal_io_boundary = 8;
    let base = h.run_on(0, || malloc::create(p).unwrap());
    let (desc, ch) = open(&h, "pools_split", true);
    // 16 blocks from 4 blocks past a boundary: every I/O splits into three children.
    let load = |bufs, write| Load {
        ch: ch.clone(),
        bufs,
        blocks: 16,
        stride: 16,
        offset: 4,
        write,
    };
    run_load(&h, load(bufs(n, 16 * 512, 0x33), true));
    assert_eq!(ch.stat().write.ops, n as u64, "each parent counts once");
    check(&run_load(&h, load(bufs(n, 16 * 512, 0), false)), 0x33);
    drop((ch, desc));
    remove(&h, &base);
}

#[test]
fn a_new_submit_does_not_overtake_a_waiter() {
    small_pools();
    let h = Harness::new(1);
    let base = h.run_on(0, || {
        malloc::create(MallocCreateParams::new("pools_fair", 8, 512)).unwrap()
    });
    let (desc, ch) = open(&h, "pools_fair", false);
    thread_local! {
        static ORDER: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
        static CH: RefCell<Option<(BdevChannel, DmaBuf)>> = const { RefCell::new(None) };
    }
    fn note(what: &'static str) {
        ORDER.with(|o| o.borrow_mut().push(what));
    }
    /// A completion that submits again at once, with the I/O it just freed back in the pool.
    fn eager(io: bdev::BdevIo, _ok: bool, _ctx: IoCtx) {
        drop(io);
        CH.with(|c| {
            let c = c.borrow();
            let Some((ch, buf)) = c.as_ref() else { return };
            match ch.read(&[iov(buf)], 0, 1, record, IoCtx::Word(500)) {
                Ok(()) => note("eager submitted"),
                Err(e) => {
                    assert!(matches!(e.error, BdevError::NoMemory));
                    note("eager queued");
                    ch.queue_io_wait(|_| note("eager resumed"), e.ctx);
                }
            }
        });
    }
    let buf = DmaBuf::new(512, 512).unwrap();
    CH.with(|c| *c.borrow_mut() = Some((ch.clone(), DmaBuf::new(512, 512).unwrap())));
    h.run_on(0, || {
        ch.read(&[iov(&buf)], 0, 1, eager, IoCtx::None).unwrap();
        for i in 1..POOL {
            ch.read(&[iov(&buf)], 0, 1, record, IoCtx::Word(i)).unwrap();
        }
        let full = ch
            .read(&[iov(&buf)], 0, 1, record, IoCtx::Word(999))
            .unwrap_err();
        assert!(matches!(full.error, BdevError::NoMemory));
        // A background job, say, queues for an I/O behind the full pool.
        ch.queue_io_wait(|_| note("waiter"), IoCtx::None);
    });
    h.poll_until_idle(100);
    assert_eq!(
        ORDER.with(|o| o.borrow().clone()),
        vec!["eager queued", "waiter", "eager resumed"],
        "the waiter went first, the eager submit after it"
    );
    assert_eq!(done().len(), POOL - 1);
    CH.with(|c| c.borrow_mut().take());
    drop((ch, desc));
    remove(&h, &base);
}

/// Collects what tracing writes while a test runs.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn a_channel_that_stops_completing_is_reported_with_its_bdev() {
    small_pools();
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut h = Harness::new(1);
        let base = h.run_on(0, || {
            malloc::create(MallocCreateParams::new("pools_stall", 8, 512)).unwrap()
        });
        let ee = h
            .run_on(0, || error::create(ErrorCreateParams::new("pools_stall")))
            .unwrap()
            .unwrap();
        let name = ee.name().to_string();
        let (desc, ch) = open(&h, &name, false);
        let p = ErrorInjectParams::new(&name, InjectIoType::Read, ErrorType::Pending, 3);
        error::inject_error(&p).unwrap();
        let buf = DmaBuf::new(512, 512).unwrap();
        h.run_on(0, || {
            for i in 0..3 {
                ch.read(&[iov(&buf)], 0, 1, record, IoCtx::Word(i)).unwrap();
            }
        });
        h.poll_until_idle(100);
        h.advance_us(2_000_000);
        h.poll_until_idle(100);
        assert!(!log.text().contains("no I/O completed"), "{}", log.text());
        for _ in 0..bdev::STALL_SECS {
            h.advance_us(1_000_000);
            h.poll_until_idle(100);
        }
        let text = log.text();
        let warning = text
            .lines()
            .find(|l| l.contains("no I/O completed"))
            .unwrap_or_else(|| panic!("no stall warning in:\n{text}"));
        assert!(warning.contains("WARN"), "{warning}");
        assert!(warning.contains(&name), "names the bdev: {warning}");
        assert!(
            warning.contains("3 of 64 are outstanding"),
            "says how many: {warning}"
        );
        assert_eq!(
            text.matches("no I/O completed").count(),
            1,
            "said once per stall"
        );
        h.run_on(0, || error::resume_pending(&name).unwrap());
        h.poll_until_idle(100);
        assert_eq!(done(), vec![(0, true), (1, true), (2, true)]);
        h.advance_us(1_000_000);
        h.poll_until_idle(100);
        assert!(log.text().contains("I/O completes again"), "{}", log.text());
        drop((ch, desc));
        remove(&h, &ee);
        remove(&h, &base);
    });
}
