//! What the target's integration tests share: a `pcache_tgt` exporting malloc bdevs over
//! NVMe/TCP on a free port, and a small blocking NVMe/TCP client written on the wire module
//! (ICReq, Connect, Property Get/Set, Identify, Read/Write in-capsule or through R2T, digests),
//! able to send anything, well-formed or not.

#![allow(dead_code)]

pub mod host;

use nvmf::wire::command::{Cqe, Sgl, Sqe, admin, io as op};
use nvmf::wire::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, Nqn, PropertyGet, PropertySet, reg,
};
use nvmf::wire::pdu::{
    CapsuleCmd, Direction, Framing, H2CData, Header, IcReq, IcResp, R2T, TermReq, encode_pdu,
};
use nvmf::wire::status::Status;
use nvmf::wire::stream::{self, Pdu, StreamConfig};
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::{RawClient, Target, free_port};

pub const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0c2f7b4e-4a61-4f0e-9d6f-1b2c3d4e5f60";
/// Blocks of the test namespace (4 KiB each).
pub const BLOCKS: u64 = 4096;
pub const BS: usize = 4096;
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A target with a 16 MiB malloc namespace (NSID 1) in `NQN`, open to any host, on a free port.
pub struct Tgt {
    /// None when the caller runs the process itself.
    pub t: Option<Target>,
    pub port: u16,
    pub rpc: RawClient,
}

pub fn rpc_ok(rpc: &mut RawClient, method: &str, params: Value) -> Value {
    let a = rpc.call(method, Some(params.clone()));
    assert!(a.get("error").is_none(), "{method} {params} failed: {a}");
    a["result"].clone()
}

impl Tgt {
    pub fn start() -> Tgt {
        Self::start_with(json!({"trtype": "TCP"}), true)
    }

    /// With these transport options; `any_host` false allows only `HOSTNQN`.
    pub fn start_with(transport: Value, any_host: bool) -> Tgt {
        let t = Target::start();
        let rpc = t.raw();
        Self::setup(Some(t), rpc, transport, any_host)
    }

    /// Sets up the transport, subsystem, namespace and listener on a running target.
    pub fn setup(t: Option<Target>, mut rpc: RawClient, transport: Value, any_host: bool) -> Tgt {
        let port = free_port();
        rpc_ok(&mut rpc, "nvmf_create_transport", transport);
        rpc_ok(
            &mut rpc,
            "bdev_malloc_create",
            json!({"name": "Malloc0", "num_blocks": BLOCKS, "block_size": BS}),
        );
        rpc_ok(
            &mut rpc,
            "nvmf_create_subsystem",
            json!({"nqn": NQN, "allow_any_host": any_host, "serial_number": "PCACHE0001"}),
        );
        if !any_host {
            rpc_ok(
                &mut rpc,
                "nvmf_subsystem_add_host",
                json!({"nqn": NQN, "host": HOSTNQN}),
            );
        }
        rpc_ok(
            &mut rpc,
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}),
        );
        rpc_ok(
            &mut rpc,
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                   "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
        );
        Tgt { t, port, rpc }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// A client with an admin queue (enabled) and I/O queue 1, each on its own connection.
    pub fn host(&self, hdgst: bool, ddgst: bool) -> Host {
        Host::connect(self.port, NQN, HOSTNQN, hdgst, ddgst)
    }

    pub fn log(&self) -> String {
        self.t.as_ref().map(Target::log_text).unwrap_or_default()
    }
}

/// A `pcache_tgt` started with exactly these flags (`tests::Target` always runs `-m 0x1`);
/// killed when dropped.
pub struct Proc {
    child: std::process::Child,
    pub sock: std::path::PathBuf,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn start(args: &[&str]) -> Proc {
        let dir = tests::tempdir();
        let sock = dir.path().join("tgt.sock");
        let log = dir.path().join("tgt.log");
        let err = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(tests::pcache_tgt())
            .args(args)
            .arg("-r")
            .arg(&sock)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("cannot start pcache_tgt");
        let p = Proc {
            child,
            sock,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        let wait = args.contains(&"--wait-for-rpc");
        let ready = |p: &Proc| {
            p.log_text().contains("pcache_tgt ready")
                || (wait && std::os::unix::net::UnixStream::connect(&p.sock).is_ok())
        };
        while !ready(&p) {
            assert!(
                start.elapsed() < DEADLINE,
                "pcache_tgt not ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    pub fn rpc(&self) -> RawClient {
        RawClient::connect(&self.sock)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the client got.
#[derive(Debug)]
pub enum Got {
    Resp(Cqe),
    C2H {
        cid: u16,
        datao: u32,
        data: Vec<u8>,
        last: bool,
        success: bool,
        digest_ok: bool,
    },
    R2T(R2T),
    Term {
        fes: u16,
        fei: u32,
        offending: Vec<u8>,
    },
    IcResp(IcResp),
    /// The target closed the connection.
    Closed,
}

pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
    pub framing: Framing,
    cfg: StreamConfig,
    pub maxh2cdata: u32,
    next_cid: u16,
    /// Connect's CATTR (bit 2: SQ flow control disabled, so successful reads may end with
    /// C2HData SUCCESS and no CapsuleResp).
    pub cattr: u8,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let start = Instant::now();
        let sock = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < DEADLINE => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
            }
        };
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Client {
            sock,
            buf: Vec::new(),
            framing: Framing::NONE,
            cfg: StreamConfig::initial(Direction::ControllerToHost, 1 << 24),
            maxh2cdata: 0,
            next_cid: 1,
            cattr: 0,
        }
    }

    pub fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Encodes and sends one PDU with this connection's framing.
    pub fn send_pdu(&mut self, h: &Header, data: &[u8]) {
        let bytes = self.pdu_bytes(h, data);
        self.send_raw(&bytes).expect("send");
    }

    pub fn pdu_bytes(&self, h: &Header, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 256 + data.len()];
        let n = encode_pdu(&mut buf, h, &self.framing, data).expect("encode");
        buf.truncate(n);
        buf
    }

    /// ICReq / ICResp with these digests.
    pub fn icreq(&mut self, hdgst: bool, ddgst: bool) -> IcResp {
        let h = Header::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst,
            ddgst,
            maxr2t: 0,
        });
        self.send_pdu(&h, &[]);
        match self.recv() {
            Got::IcResp(r) => {
                self.framing = Framing {
                    hdgst: r.hdgst,
                    ddgst: r.ddgst,
                    pda: r.cpda,
                };
                self.cfg.before_icreq = false;
                self.cfg.hdgst = r.hdgst;
                self.cfg.ddgst = r.ddgst;
                self.maxh2cdata = r.maxh2cdata;
                r
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
    }

    /// The next PDU (or the close), failing the test after `DEADLINE`.
    pub fn recv(&mut self) -> Got {
        self.try_recv(DEADLINE)
            .unwrap_or_else(|| panic!("nothing from the target in {DEADLINE:?}"))
    }

    pub fn try_recv(&mut self, timeout: Duration) -> Option<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            match stream::parse(&self.buf, &self.cfg) {
                Ok(Some((pdu, used))) => {
                    let got = match pdu {
                        Pdu::IcResp(r) => Got::IcResp(r),
                        Pdu::CapsuleResp(r) => Got::Resp(Cqe::decode(&r.cqe).expect("cqe")),
                        Pdu::C2HData { hdr, data } => Got::C2H {
                            cid: hdr.cccid,
                            datao: hdr.datao,
                            digest_ok: data.is_ok(),
                            data: data.map(<[u8]>::to_vec).unwrap_or_default(),
                            last: hdr.last,
                            success: hdr.success,
                        },
                        Pdu::R2T(r) => Got::R2T(r),
                        Pdu::C2HTermReq { term, offending } => Got::Term {
                            fes: term.fes,
                            fei: term.fei,
                            offending: offending.to_vec(),
                        },
                        other => panic!("the target sent {other:?}"),
                    };
                    self.buf.drain(..used);
                    return Some(got);
                }
                Ok(None) => {}
                Err(e) => panic!("bad PDU from the target: {e}: {:02x?}", &self.buf),
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Some(Got::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Some(Got::Closed),
            }
        }
    }

    /// Sends a capsule with `inline` in-capsule data.
    pub fn send_cmd(&mut self, sqe: &Sqe, inline: &[u8]) {
        let h = Header::CapsuleCmd(CapsuleCmd {
            sqe: sqe.to_bytes(),
        });
        self.send_pdu(&h, inline);
    }

    /// Runs a command to its completion: in-capsule data when `inline`, else host data
    /// through R2T/H2CData; controller data collected from C2HData.
    pub fn run(&mut self, mut sqe: Sqe, out: &[u8], inline: bool) -> (Cqe, Vec<u8>) {
        let mut data_in = Vec::new();
        if inline && !out.is_empty() {
            sqe.dptr = Sgl::in_capsule(0, out.len() as u32);
            self.send_cmd(&sqe, out);
        } else {
            self.send_cmd(&sqe, &[]);
        }
        loop {
            match self.recv() {
                Got::Resp(c) => {
                    assert_eq!(c.cid, sqe.cid, "response to another command");
                    return (c, data_in);
                }
                Got::C2H {
                    cid,
                    datao,
                    data,
                    success,
                    digest_ok,
                    ..
                } => {
                    assert_eq!(cid, sqe.cid);
                    assert!(digest_ok, "C2HData digest mismatch");
                    assert_eq!(datao as usize, data_in.len(), "C2HData out of order");
                    data_in.extend_from_slice(&data);
                    if success {
                        return (Cqe::new(cid, Status::SUCCESS), data_in);
                    }
                }
                Got::R2T(r) => {
                    assert_eq!(r.cccid, sqe.cid);
                    let (start, end) = (r.r2to as usize, (r.r2to + r.r2tl) as usize);
                    let max = self.maxh2cdata.max(4096) as usize;
                    let mut off = start;
                    while off < end {
                        let n = (end - off).min(max);
                        let h = Header::H2CData(H2CData {
                            cccid: r.cccid,
                            ttag: r.ttag,
                            datao: off as u32,
                            datal: n as u32,
                            last: off + n == end,
                        });
                        self.send_pdu(&h, &out[off..off + n]);
                        off += n;
                    }
                }
                other => panic!("expected a response to cid {}, got {other:?}", sqe.cid),
            }
        }
    }

    /// Fabrics Connect: queue `qid` of controller `cntlid` (0xFFFF for the admin queue).
    pub fn try_connect(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        sqsize: u16,
        kato_ms: u32,
    ) -> Cqe {
        let cmd = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize,
            cattr: self.cattr,
            kato: kato_ms,
        };
        let cid = self.cid();
        let sqe = cmd.to_sqe(cid, Sgl::in_capsule(0, 1024));
        let data = ConnectData {
            hostid: *uuid_bytes(),
            cntlid,
            subnqn: Nqn::new(subnqn).expect("subnqn"),
            hostnqn: Nqn::new(hostnqn).expect("hostnqn"),
        };
        let mut d = vec![0u8; 1024];
        data.encode(&mut d).expect("connect data");
        self.run(sqe, &d, true).0
    }

    pub fn connect_admin(&mut self, subnqn: &str, hostnqn: &str, kato_ms: u32) -> u16 {
        let c = self.try_connect(subnqn, hostnqn, 0, CNTLID_DYNAMIC, 31, kato_ms);
        assert!(c.status.is_success(), "admin Connect: {:?}", c.status);
        c.dw0 as u16
    }

    pub fn property_get(&mut self, offset: u32, size: u8) -> u64 {
        let cid = self.cid();
        let (c, _) = self.run(PropertyGet { size, offset }.to_sqe(cid), &[], true);
        assert!(
            c.status.is_success(),
            "Property Get {offset:#x}: {:?}",
            c.status
        );
        c.result_u64()
    }

    pub fn property_set(&mut self, offset: u32, size: u8, value: u64) -> Status {
        let cid = self.cid();
        let (c, _) = self.run(
            PropertySet {
                size,
                offset,
                value,
            }
            .to_sqe(cid),
            &[],
            true,
        );
        c.status
    }

    /// CC.EN = 1 with 64/16-byte entries, then waits for CSTS.RDY.
    pub fn enable(&mut self) {
        let cc = 1 | (6 << 16) | (4 << 20);
        assert_eq!(self.property_set(reg::CC, 4, cc), Status::SUCCESS);
        assert_eq!(self.property_get(reg::CSTS, 4) & 1, 1, "CSTS.RDY");
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> (Status, Vec<u8>) {
        let cid = self.cid();
        let mut sqe = Sqe::new(admin::IDENTIFY, cid, nsid);
        sqe.cdw10 = u32::from(cns);
        sqe.dptr = Sgl::transport(4096);
        let (c, d) = self.run(sqe, &[], false);
        (c.status, d)
    }

    /// Set Features Number of Queues: `n` I/O queues asked for; the grant.
    pub fn set_queues(&mut self, n: u16) -> u32 {
        let cid = self.cid();
        let mut sqe = Sqe::new(admin::SET_FEATURES, cid, 0);
        sqe.cdw10 = 0x07;
        sqe.cdw11 = u32::from(n - 1) | (u32::from(n - 1) << 16);
        let (c, _) = self.run(sqe, &[], false);
        assert!(c.status.is_success(), "Set Features queues: {:?}", c.status);
        c.dw0
    }

    pub fn keep_alive(&mut self) -> Status {
        let cid = self.cid();
        let (c, _) = self.run(Sqe::new(admin::KEEP_ALIVE, cid, 0), &[], false);
        c.status
    }

    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8], inline: bool) -> Status {
        let cid = self.cid();
        let mut sqe = Sqe::new(op::WRITE, cid, nsid);
        sqe.set_lba_range(slba, (data.len() / BS) as u32)
            .expect("range");
        sqe.dptr = Sgl::transport(data.len() as u32);
        self.run(sqe, data, inline).0.status
    }

    pub fn read(&mut self, nsid: u32, slba: u64, blocks: u32) -> (Status, Vec<u8>) {
        let cid = self.cid();
        let mut sqe = Sqe::new(op::READ, cid, nsid);
        sqe.set_lba_range(slba, blocks).expect("range");
        sqe.dptr = Sgl::transport(blocks * BS as u32);
        let (c, d) = self.run(sqe, &[], false);
        (c.status, d)
    }

    /// Sends every command at once (writes' data through R2T, `out` per command) and collects
    /// each one's completion and read data, in any order.
    pub fn pipeline(&mut self, cmds: &[(Sqe, Vec<u8>)]) -> Vec<(Cqe, Vec<u8>)> {
        let mut results: Vec<Option<(Cqe, Vec<u8>)>> = vec![None; cmds.len()];
        let mut data: Vec<Vec<u8>> = vec![Vec::new(); cmds.len()];
        let index = |cid: u16| cmds.iter().position(|(s, _)| s.cid == cid);
        for (sqe, _) in cmds {
            self.send_cmd(sqe, &[]);
        }
        let mut left = cmds.len();
        while left > 0 {
            match self.recv() {
                Got::Resp(c) => {
                    let i = index(c.cid).expect("completion of an unknown cid");
                    assert!(results[i].is_none(), "two completions for cid {}", c.cid);
                    results[i] = Some((c, std::mem::take(&mut data[i])));
                    left -= 1;
                }
                Got::C2H {
                    cid,
                    datao,
                    data: d,
                    digest_ok,
                    ..
                } => {
                    let i = index(cid).expect("data for an unknown cid");
                    assert!(digest_ok);
                    assert_eq!(datao as usize, data[i].len());
                    data[i].extend_from_slice(&d);
                }
                Got::R2T(r) => {
                    let i = index(r.cccid).expect("R2T for an unknown cid");
                    let out = &cmds[i].1;
                    let (a, b) = (r.r2to as usize, (r.r2to + r.r2tl) as usize);
                    let h = Header::H2CData(H2CData {
                        cccid: r.cccid,
                        ttag: r.ttag,
                        datao: r.r2to,
                        datal: r.r2tl,
                        last: true,
                    });
                    self.send_pdu(&h, &out[a..b]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        results.into_iter().flatten().collect()
    }

    /// Whether the target closes the connection within `timeout` (PDUs before are dropped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(Got::Closed) = self.try_recv_lenient(left) {
                return true;
            }
        }
        false
    }

    /// Like `try_recv`, but bytes that do not parse are dropped instead of failing.
    fn try_recv_lenient(&mut self, timeout: Duration) -> Option<Got> {
        self.buf.clear();
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Some(Got::Closed),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Some(Got::Closed),
            }
        }
        None
    }
}

fn uuid_bytes() -> &'static [u8; 16] {
    &[
        0x0c, 0x2f, 0x7b, 0x4e, 0x4a, 0x61, 0x4f, 0x0e, 0x9d, 0x6f, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f,
        0x60,
    ]
}

/// An admin queue (connected, enabled, queues granted) and I/O queue 1.
pub struct Host {
    pub admin: Client,
    pub io: Client,
    pub cntlid: u16,
}

impl Host {
    pub fn connect(port: u16, subnqn: &str, hostnqn: &str, hdgst: bool, ddgst: bool) -> Host {
        let mut admin = Client::connect(port);
        admin.icreq(hdgst, ddgst);
        let cntlid = admin.connect_admin(subnqn, hostnqn, 0);
        admin.enable();
        admin.set_queues(4);
        let mut io = Client::connect(port);
        io.icreq(hdgst, ddgst);
        let c = io.try_connect(subnqn, hostnqn, 1, cntlid, 127, 0);
        assert!(c.status.is_success(), "I/O Connect: {:?}", c.status);
        Host { admin, io, cntlid }
    }
}

/// A block pattern: every byte depends on the LBA, a seed and its offset.
pub fn pattern(slba: u64, blocks: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BS];
    for (i, b) in v.iter_mut().enumerate() {
        let lba = slba + (i / BS) as u64;
        *b = (lba as u8)
            .wrapping_mul(31)
            .wrapping_add((i % BS) as u8)
            .wrapping_add(seed);
    }
    v
}

/// A TermReq as the target should have sent it.
pub fn term_of(g: &Got) -> Option<TermReq> {
    match g {
        Got::Term { fes, fei, .. } => Some(TermReq {
            fes: *fes,
            fei: *fei,
        }),
        _ => None,
    }
}
