//! The application framework shared by `pcache_tgt` and `bdevperf` (SPDK's event/app layer):
//! start the reactors, serve JSON-RPC from the app thread, apply the JSON config through the same
//! method handlers the RPC server calls, and shut down cleanly on a signal or `spdk_kill_instance`.

use anyhow::Context;
use poller::{CpuMask, PollStatus, Poller, ReactorOptions};
use rpc::{AppState, Responder, RpcServer, StateMask};
use serde::Deserialize;
use serde_json::json;
use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once};

pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/spdk.sock";

/// How often the app thread polls the RPC socket and the signal flag (SPDK polls RPC every 4 ms).
const RPC_POLL_US: u64 = 1000;

#[derive(Clone, Debug)]
pub struct AppOptions {
    pub name: String,
    pub cpumask: CpuMask,
    pub json_config: Option<PathBuf>,
    /// None: no RPC server.
    pub rpc_socket: Option<PathBuf>,
    pub rpc_mode: u32,
    pub wait_for_rpc: bool,
    pub idle_backoff: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            name: "pcache".into(),
            cpumask: CpuMask::single(0),
            json_config: None,
            rpc_socket: Some(DEFAULT_RPC_SOCKET.into()),
            rpc_mode: 0o600,
            wait_for_rpc: false,
            idle_backoff: false,
        }
    }
}

static EXIT_CODE: AtomicI32 = AtomicI32::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Sets up logging: `RUST_LOG` if set, else info, plus debug for each `-L` flag.
pub fn init_logging(log_flags: &[String]) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        for f in log_flags {
            filter.push_str(&format!(",{f}=debug"));
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .try_init();
    });
}

/// Colour is for a person watching: only when stderr is a terminal, and never when NO_COLOR
/// is set to anything but "" (no-color.org), so logs sent to files or pipes stay plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Registers every RPC method and subsystem of the target (idempotent).
pub fn register_rpcs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // build.rs records the short commit, "unknown" outside a git checkout (then none is shown).
        let commit = match env!("PCACHE_GIT_SHA") {
            "unknown" => "",
            sha => sha,
        };
        rpc::register_builtin_methods(&rpc::VersionInfo::from_cargo(
            env!("CARGO_PKG_VERSION"),
            commit,
        ));
        bdev::rpc::register_layer_rpcs();
        bdev::malloc::rpc::register_rpcs();
        bdev::null::rpc::register_rpcs();
        bdev::uring::rpc::register_rpcs();
        bdev::pmem::rpc::register_rpcs();
        bdev::passthru::rpc::register_rpcs();
        bdev::delay::rpc::register_rpcs();
        bdev::error_inject::rpc::register_rpcs();
        cache::rpc::register_rpcs();
        nvmf::target::rpc::register_rpcs();
        nvmf::host::rpc::register_rpcs();
        // RUNTIME only, as in SPDK: a target waiting for framework_start_init is stopped by a signal.
        rpc::register("spdk_kill_instance", StateMask::RUNTIME, kill_instance);
        rpc::register(
            "framework_get_reactors",
            StateMask::RUNTIME,
            |_: rpc::NoParams, r: Responder| r.ok(reactors_json()),
        );
        rpc::register(
            "thread_get_stats",
            StateMask::RUNTIME,
            |_: rpc::NoParams, r: Responder| r.ok(threads_json()),
        );
        rpc::set_start_init_hook(|r: Responder| match bdev::subsystem_init() {
            Ok(()) => r.ok(json!(true)),
            Err(e) => r.err(e.into()),
        });
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillParams {
    sig_name: String,
}

fn kill_instance(p: KillParams, r: Responder) {
    match p.sig_name.as_str() {
        "SIGINT" | "SIGTERM" | "SIGQUIT" | "SIGKILL" | "SIGHUP" => {
            r.ok(json!(true));
            stop(0);
        }
        _ => r.err(rpc::RpcError::errno_msg(
            libc::EINVAL,
            format!("unsupported signal {}", p.sig_name),
        )),
    }
}

/// SPDK's cpumask rendering: hex digits without a "0x" prefix ("1", "3").
fn cpumask_str(core: u32) -> String {
    CpuMask::single(core)
        .to_hex()
        .trim_start_matches("0x")
        .to_owned()
}

/// The OS thread id running reactor `index`: the first reactor runs on the main thread, the
/// others on threads named `reactor_<core>`.
fn reactor_tid(index: usize, core: u32) -> Option<u32> {
    if index == 0 {
        return Some(std::process::id());
    }
    let name = format!("reactor_{core}");
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// (usr, sys) CPU time of an OS thread in clock ticks, as SPDK reads it from /proc.
fn thread_cpu_times(tid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The NUMA node of a CPU (0 when the system does not say).
fn numa_node(core: u32) -> u32 {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{core}"))
        .ok()
        .and_then(|dir| {
            dir.flatten()
                .find_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        })
        .unwrap_or(0)
}

fn reactors_json() -> serde_json::Value {
    let reactors: Vec<_> = poller::reactors()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let tid = reactor_tid(i, r.core);
            let (usr, sys) = tid.map(thread_cpu_times).unwrap_or((0, 0));
            json!({
                "lcore": r.core,
                "numa_id": numa_node(r.core),
                "tid": tid.unwrap_or(0),
                "busy": r.busy_ticks,
                "idle": r.idle_ticks,
                "in_interrupt": false,
                "irq": 0,
                "sys": sys,
                "usr": usr,
                "lw_threads": r.threads.iter().map(|t| {
                    let c = t.counters();
                    json!({
                        "name": t.name(),
                        "id": t.id(),
                        "cpumask": cpumask_str(t.core()),
                        "elapsed": c.busy_ticks.load(Ordering::Relaxed)
                            + c.idle_ticks.load(Ordering::Relaxed),
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"tick_rate": poller::time::ticks_hz(), "pid": std::process::id(), "reactors": reactors})
}

fn threads_json() -> serde_json::Value {
    let threads: Vec<_> = poller::threads()
        .iter()
        .map(|t| {
            let c = t.counters();
            json!({
                "name": t.name(),
                "id": t.id(),
                "cpumask": cpumask_str(t.core()),
                "busy": c.busy_ticks.load(Ordering::Relaxed),
                "idle": c.idle_ticks.load(Ordering::Relaxed),
                "active_pollers_count": c.active_pollers.load(Ordering::Relaxed),
                "timed_pollers_count": c.timed_pollers.load(Ordering::Relaxed),
                "paused_pollers_count": c.paused_pollers.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({"tick_rate": poller::time::ticks_hz(), "threads": threads})
}

/// Begins a clean shutdown from any thread: stop serving RPC, disconnect the NVMe-oF hosts,
/// unregister every bdev (in-flight I/O drains through hot-remove), finalise modules in reverse
/// order, stop the reactors.
pub fn stop(exit_code: i32) {
    if STOPPING.swap(true, Ordering::SeqCst) {
        return;
    }
    if exit_code != 0 {
        EXIT_CODE.store(exit_code, Ordering::SeqCst);
    }
    match poller::app_thread() {
        Some(app) => app.send_msg(|| {
            tracing::info!("shutting down");
            CLOSE_RPC.with(|c| c.borrow_mut().take().map(|f| f()));
            // As SPDK's subsystems finish in reverse order: the NVMe-oF target first (hosts
            // disconnected, their I/O drained, namespaces let go), then the bdevs.
            nvmf::target::poll_group::shutdown(|| {
                if let Some(app) = poller::app_thread() {
                    app.send_msg(|| bdev::subsystem_fini(poller::stop));
                }
            });
        }),
        None => poller::stop(),
    }
}

thread_local! {
    static CLOSE_RPC: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Runs the application until it stops; returns the process exit code. `on_ready` runs on the app
/// thread once the framework is initialised (after the config, or after framework_start_init).
pub fn run(opts: AppOptions, on_ready: impl FnOnce() + Send + 'static) -> anyhow::Result<i32> {
    register_rpcs();
    let entries = match &opts.json_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            rpc::parse_config(&text)
                .with_context(|| format!("invalid config {}", path.display()))?
        }
        None => Vec::new(),
    };
    let server = match &opts.rpc_socket {
        Some(path) => Some(
            RpcServer::listen(path, opts.rpc_mode)
                .with_context(|| format!("cannot listen on RPC socket {}", path.display()))?,
        ),
        None => None,
    };
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone())
            .context("cannot install signal handlers")?;
    }
    rpc::set_state(AppState::Startup);
    STOPPING.store(false, Ordering::SeqCst);
    EXIT_CODE.store(0, Ordering::SeqCst);
    tracing::info!("{} starting on cores {:?}", opts.name, opts.cpumask.cores());
    tracing::info!("{}", pmem::cpu::describe());

    let reactor_opts = ReactorOptions {
        cpumask: opts.cpumask.clone(),
        idle_backoff: opts.idle_backoff,
        pin: true,
    };
    let wait_for_rpc = opts.wait_for_rpc;
    let ready: Ready = Arc::new(std::sync::Mutex::new(Some(Box::new(on_ready))));
    poller::run(reactor_opts, move || {
        start_app_thread(server, signalled);
        load_config(entries, wait_for_rpc, ready);
    })?;
    Ok(EXIT_CODE.load(Ordering::SeqCst))
}

type Ready = Arc<std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>>;

/// Runs `on_ready` once, on the app thread.
fn fire_ready(ready: &Ready) {
    let Some(f) = ready.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let Some(app) = poller::app_thread() else {
        return;
    };
    app.send_msg(move || {
        for b in bdev::Bdev::all() {
            tracing::info!(
                bdev = b.name(),
                blocks = b.num_blocks(),
                block_size = b.block_size(),
                "bdev ready"
            );
        }
        f()
    });
}

fn start_app_thread(server: Option<RpcServer>, signalled: Arc<AtomicBool>) {
    let server = Rc::new(RefCell::new(server));
    let s = server.clone();
    CLOSE_RPC.with(|c| {
        *c.borrow_mut() = Some(Box::new(move || {
            if let Some(mut srv) = s.borrow_mut().take() {
                srv.close();
            }
        }))
    });
    Poller::register("app_rpc", RPC_POLL_US, move || {
        if signalled.swap(false, Ordering::SeqCst) {
            tracing::info!("signal received");
            stop(0);
        }
        let busy = match server.borrow_mut().as_mut() {
            Some(srv) => srv.poll(),
            None => false,
        };
        PollStatus::from(busy)
    });
}

fn load_config(entries: Vec<rpc::ConfigEntry>, wait_for_rpc: bool, ready: Ready) {
    // With --wait-for-rpc and no config, init waits for framework_start_init from a client.
    if wait_for_rpc && entries.is_empty() {
        tracing::info!("waiting for framework_start_init over RPC");
        rpc::Registry::global().on_runtime(move || fire_ready(&ready));
        return;
    }
    let spawn: rpc::Spawn = Arc::new(|f: Box<dyn FnOnce() + Send>| {
        if let Some(app) = poller::app_thread() {
            app.send_msg(f);
        }
    });
    rpc::ConfigLoader::run(entries, spawn, move |res| {
        if let Err(e) = res {
            tracing::error!("config failed: {e}");
            stop(1);
            return;
        }
        if rpc::state() == AppState::Runtime {
            fire_ready(&ready);
            return;
        }
        rpc::call(
            "framework_start_init",
            None,
            Responder::new(move |r| match r {
                Ok(_) => fire_ready(&ready),
                Err(e) => {
                    tracing::error!("framework init failed: {}", e.message());
                    stop(1);
                }
            }),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some("1".into())));
    }
}
