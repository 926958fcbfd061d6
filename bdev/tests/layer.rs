//! The bdev layer under the deterministic harness: I/O round trips, deferred completion, pool
//! exhaustion and the wait list, splitting, claims and hot-remove.

use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::{Bdev, BdevDesc, BdevEvent, DmaBuf, IoCtx, IoFlags, IoVec};
use poller::Harness;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;
use common::{done, iov, record};

fn malloc(name: &str, blocks: u64, bs: u32, boundary: u32) -> Bdev {
    let mut p = MallocCreateParams::new(name, blocks, bs);
    p.optimal_io_boundary = boundary;
    malloc::create(p).unwrap()
}

#[test]
fn write_then_read_round_trips_and_completes_later() {
    let h = Harness::new(1);
    let b = malloc("layer_rt", 64, 512, 0);
    let desc = BdevDesc::open(b.name(), true, |_| {}).unwrap();
    let ch = h.run_on(0, || desc.get_io_channel().unwrap());
    let mut wbuf = DmaBuf::new(1024, 512).unwrap();
    wbuf.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = i as u8);
    let rbuf = DmaBuf::new(1024, 512).unwrap();
    h.run_on(0, || {
        ch.write(
            &[iov(&wbuf)],
            10,
            2,
            IoFlags::default(),
            record,
            IoCtx::Word(1),
        )
        .unwrap()
    });
    assert!(
        done().is_empty(),
        "completion is deferred to the poller, never inside submit"
    );
    h.poll_until_idle(10);
    assert_eq!(done(), vec![(1, true)]);
    h.run_on(0, || {
        ch.read(&[iov(&rbuf)], 10, 2, record, IoCtx::Word(2))
            .unwrap()
    });
    h.poll_until_idle(10);
    assert_eq!(done(), vec![(2, true)]);
    assert_eq!(rbuf.as_slice(), wbuf.as_slice());
    let st = ch.stat();
    assert_eq!(
        (st.read.ops, st.read.bytes, st.write.ops, st.write.bytes),
        (1, 1024, 1, 1024)
    );
    drop(ch);
    drop(desc);
    b.unregister(|r| r.unwrap());
}

#[test]
fn bad_requests_are_refused_with_the_context_back() {
    let h = Harness::new(1);
    let b = malloc("layer_bad", 16, 512, 0);
    let ro = BdevDesc::open(b.name(), false, |_| {}).unwrap();
    let ch = h.run_on(0, || ro.get_io_channel().unwrap());
    let buf = DmaBuf::new(512, 512).unwrap();
    let e = h.run_on(0, || {
        ch.write(
            &[iov(&buf)],
            0,
            1,
            IoFlags::default(),
            record,
            IoCtx::Word(7),
        )
        .unwrap_err()
    });
    assert_eq!(e.error.errno(), libc::EPERM);
    assert!(matches!(e.ctx, IoCtx::Word(7)));
    let e = h.run_on(0, || {
        ch.read(&[iov(&buf)], 16, 1, record, IoCtx::None)
            .unwrap_err()
    });
    assert_eq!(e.error.errno(), libc::EINVAL, "past the end");
    let e = h.run_on(0, || {
        ch.read(&[iov(&buf)], 0, 2, record, IoCtx::None)
            .unwrap_err()
    });
    assert_eq!(
        e.error.errno(),
        libc::EINVAL,
        "buffer shorter than the blocks"
    );
    drop(ch);
    drop(ro);
    b.unregister(|_| {});
}

#[test]
fn pool_exhaustion_queues_and_resumes() {
    bdev::set_options(bdev::BdevOptions {
        bdev_io_cache_size: 1024,
        ..Default::default()
    })
    .unwrap();
    let h = Harness::new(1);
    let b = malloc("layer_pool", 8, 512, 0);
    let desc = BdevDesc::open(b.name(), true, |_| {}).unwrap();
    let ch = h.run_on(0, || desc.get_io_channel().unwrap());
    let buf = DmaBuf::new(512, 512).unwrap();
    let mut submitted = 0;
    let overflow = h.run_on(0, || {
        loop {
            match ch.read(&[iov(&buf)], 0, 1, record, IoCtx::Word(submitted)) {
                Ok(()) => submitted += 1,
                Err(e) => break e,
            }
        }
    });
    assert_eq!(overflow.error.errno(), libc::ENOMEM);
    assert_eq!(
        submitted, 1024,
        "the channel's pool holds bdev_io_cache_size I/Os"
    );
    static RESUMED: AtomicUsize = AtomicUsize::new(0);
    fn resume(ctx: IoCtx) {
        if let IoCtx::Word(w) = ctx {
            RESUMED.store(w, Ordering::SeqCst);
        }
    }
    h.run_on(0, || ch.queue_io_wait(resume, IoCtx::Word(4242)));
    h.poll_until_idle(10);
    assert_eq!(done().len(), 1024);
    assert_eq!(
        RESUMED.load(Ordering::SeqCst),
        4242,
        "the waiter ran once I/Os were free"
    );
    drop(ch);
    drop(desc);
    b.unregister(|_| {});
}

#[test]
fn io_crossing_the_optimal_boundary_is_split() {
    let h = Harness::new(1);
    let b = malloc("layer_split", 64, 512, 8);
    let desc = BdevDesc::open(b.name(), true, |_| {}).unwrap();
    let ch = h.run_on(0, || desc.get_io_channel().unwrap());
    let mut w = DmaBuf::new(20 * 512, 512).unwrap();
    w.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = (i / 512) as u8 + 1);
    h.run_on(0, || {
        ch.write(
            &[iov(&w)],
            6,
            20,
            IoFlags::default(),
            record,
            IoCtx::Word(1),
        )
        .unwrap()
    });
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true)]);
    let r = DmaBuf::new(20 * 512, 512).unwrap();
    // Two segments, unaligned to the split points, to exercise vector slicing.
    let (a, c) = (r.as_mut_ptr(), 3 * 512 + 100);
    // SAFETY: both halves lie inside `r`, which outlives the I/O.
    let v = unsafe { [IoVec::new(a, c), IoVec::new(a.add(c), 20 * 512 - c)] };
    h.run_on(0, || ch.read(&v, 6, 20, record, IoCtx::Word(2)).unwrap());
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(2, true)]);
    assert_eq!(r.as_slice(), w.as_slice());
    assert_eq!(ch.stat().write.ops, 1, "the parent counts once");
    drop(ch);
    drop(desc);
    b.unregister(|_| {});
}

#[test]
fn claims_are_exclusive_and_released_on_close() {
    let b = malloc("layer_claim", 8, 512, 0);
    let d1 = BdevDesc::open(b.name(), true, |_| {}).unwrap();
    d1.claim("passthru").unwrap();
    assert_eq!(b.claimed_by().as_deref(), Some("passthru"));
    assert_eq!(
        BdevDesc::open(b.name(), true, |_| {})
            .err()
            .unwrap()
            .errno(),
        libc::EPERM
    );
    let reader = BdevDesc::open(b.name(), false, |_| {}).unwrap();
    assert!(reader.claim("other").is_err());
    drop(d1);
    assert!(b.claimed_by().is_none());
    drop(reader);
    b.unregister(|_| {});
}

#[test]
fn hot_remove_reaches_openers_and_finishes_when_they_close() {
    let h = Harness::new(2);
    let b = malloc("layer_remove", 8, 512, 0);
    let desc: Arc<Mutex<Option<BdevDesc>>> = Arc::new(Mutex::new(None));
    let events = Arc::new(AtomicUsize::new(0));
    let (d, e) = (desc.clone(), events.clone());
    let opened = h.run_on(1, || {
        BdevDesc::open(b.name(), true, move |ev| {
            assert_eq!(ev, BdevEvent::Remove);
            e.fetch_add(1, Ordering::SeqCst);
            d.lock().unwrap().take(); // close on the event
        })
        .unwrap()
    });
    *desc.lock().unwrap() = Some(opened);
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    h.run_on(0, || {
        b.unregister(move |r| {
            r.unwrap();
            f.fetch_add(1, Ordering::SeqCst);
        })
    });
    assert!(
        Bdev::lookup("layer_remove").is_some(),
        "still there while a descriptor is open"
    );
    assert_eq!(
        BdevDesc::open("layer_remove", false, |_| {})
            .err()
            .unwrap()
            .errno(),
        libc::ENODEV
    );
    h.poll_thread(0);
    assert_eq!(
        events.load(Ordering::SeqCst),
        0,
        "the event runs on the opener's thread"
    );
    h.poll_thread(1);
    assert_eq!(events.load(Ordering::SeqCst), 1);
    assert!(Bdev::lookup("layer_remove").is_none());
    h.poll_until_idle(10);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "done runs on the unregistering thread"
    );
}
