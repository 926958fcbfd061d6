//! The coordinator, on the app thread: pick the targets, place one job per (bdev, core), let
//! every job prepare, start them together, collect their results, print the report and end the run.

use crate::job::{self, Hooks, JobResult, JobSpec, JobStatus, Prepared, Workload};
use crate::pattern::PatternSpec;
use crate::report;
use bdev::Bdev;
use poller::ThreadHandle;
use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;

/// One test run, as the command line (or perform_tests) describes it.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: Workload,
    pub read_pct: u32,
    pub queue_depth: u32,
    pub io_size: u32,
    /// None: until every block of the range is covered once (pattern write, check).
    pub run_secs: Option<u64>,
    /// Empty: every bdev that nothing has claimed.
    pub targets: Vec<String>,
    /// -C: every core drives every bdev, each on its own slice of it.
    pub every_core: bool,
    pub pattern: Option<PatternSpec>,
    pub continue_on_failure: bool,
    pub json_output: Option<PathBuf>,
}

/// What happens once the report is out.
pub enum Finish {
    /// Stop the application with the run's exit code.
    Exit,
    /// Answer perform_tests with the results and keep running (stop only on failure).
    Rpc(rpc::Responder),
}

struct Run {
    cfg: RunConfig,
    prepared: Vec<Option<(ThreadHandle, usize)>>,
    waiting_prepare: usize,
    waiting_finish: usize,
    results: Vec<JobResult>,
    errors: Vec<String>,
    finish: Option<Finish>,
}

thread_local! {
    /// The run in progress; lives on the app thread only.
    static RUN: RefCell<Option<Run>> = const { RefCell::new(None) };
    /// Job threads by name, kept for the next run (perform_tests): a thread that has done bdev
    /// I/O cannot exit today (the bdev layer's completion poller stays registered), so a new one
    /// per run would only pile up idle threads on the reactors.
    static THREADS: RefCell<Vec<ThreadHandle>> = const { RefCell::new(Vec::new()) };
}

/// The job thread `name` on `core`, reused from an earlier run when it is still there.
fn job_thread(name: &str, core: u32) -> Result<ThreadHandle, poller::PollerError> {
    let found = THREADS.with_borrow(|ts| {
        ts.iter()
            .find(|t| t.name() == name && t.core() == core && !t.has_exited())
            .cloned()
    });
    if let Some(t) = found {
        return Ok(t);
    }
    let t = poller::spawn_thread(name, Some(core))?;
    THREADS.with_borrow_mut(|ts| {
        ts.retain(|t| !t.has_exited());
        ts.push(t.clone());
    });
    Ok(t)
}

pub fn in_progress() -> bool {
    RUN.with_borrow(|r| r.is_some())
}

const HOOKS: Hooks = Hooks {
    prepared: on_prepared,
    finished: on_finished,
};

/// Starts a run (on the app thread). An error means nothing was started (a perform_tests caller
/// has its answer already).
pub fn start(cfg: RunConfig, finish: Finish) -> Result<(), String> {
    let planned = if in_progress() {
        Err("Another test is already in progress".to_string())
    } else {
        poller::Thread::current_handle()
            .ok_or_else(|| "not on the app thread".to_string())
            .and_then(|coord| Ok((coord, plan(&cfg)?)))
    };
    let (coord, specs) = match planned {
        Ok(p) => p,
        Err(e) => {
            if let Finish::Rpc(r) = finish {
                r.err(rpc::RpcError::invalid_params(e.clone()));
            }
            return Err(e);
        }
    };
    let n = specs.len();
    RUN.with_borrow_mut(|r| {
        *r = Some(Run {
            cfg,
            prepared: (0..n).map(|_| None).collect(),
            waiting_prepare: n,
            waiting_finish: 0,
            results: Vec::new(),
            errors: Vec::new(),
            finish: Some(finish),
        })
    });
    for spec in specs {
        let name = format!("bdevperf_{}_{}", spec.bdev, spec.core);
        let index = spec.index;
        match job_thread(&name, spec.core) {
            Ok(t) => {
                let coord = coord.clone();
                t.send_msg(move || job::prepare(spec, coord, HOOKS));
            }
            Err(e) => on_prepared(index, Err(format!("cannot start thread {name}: {e}"))),
        }
    }
    Ok(())
}

/// One job per target bdev, placed round-robin over the cores (SPDK's default), or with -C one
/// per (bdev, core), each on its own equal slice of the bdev.
fn plan(cfg: &RunConfig) -> Result<Vec<JobSpec>, String> {
    let cores = poller::reactor_cores();
    if cores.is_empty() {
        return Err("no reactors are running".into());
    }
    let explicit = !cfg.targets.is_empty();
    let candidates: Vec<Bdev> = if explicit {
        cfg.targets
            .iter()
            .map(|n| Bdev::lookup(n).ok_or_else(|| format!("Unable to find bdev '{n}'")))
            .collect::<Result<_, _>>()?
    } else {
        Bdev::all()
            .into_iter()
            .filter(|b| b.claimed_by().is_none())
            .collect()
    };
    let mut bdevs = Vec::new();
    for b in candidates {
        let missing: Vec<&str> = cfg
            .workload
            .io_types(cfg.read_pct)
            .into_iter()
            .filter(|t| !b.io_type_supported(*t))
            .map(|t| t.name())
            .collect();
        if missing.is_empty() {
            bdevs.push(b);
        } else if explicit {
            return Err(format!(
                "bdev {} does not support {} (needed by workload {})",
                b.name(),
                missing.join(", "),
                cfg.workload.name()
            ));
        } else {
            println!(
                "Skipping {} because it does not support {}",
                b.name(),
                missing.join(", ")
            );
        }
    }
    if bdevs.is_empty() {
        return Err(if explicit {
            "no bdev to run against".into()
        } else {
            "no bdev to run against: the config created none that suits the workload (or all are claimed)".into()
        });
    }
    let base = |index, b: &Bdev, core, offset_blocks, num_blocks| JobSpec {
        index,
        bdev: b.name().to_string(),
        core,
        workload: cfg.workload,
        read_pct: cfg.read_pct,
        queue_depth: cfg.queue_depth,
        io_size: cfg.io_size,
        run_us: cfg.run_secs.map(|s| s.saturating_mul(1_000_000)),
        offset_blocks,
        num_blocks,
        pattern: cfg.pattern,
        continue_on_failure: cfg.continue_on_failure,
    };
    let mut specs = Vec::new();
    for (i, b) in bdevs.iter().enumerate() {
        if cfg.every_core {
            let per = b.num_blocks() / cores.len() as u64;
            for (k, &core) in cores.iter().enumerate() {
                specs.push(base(specs.len(), b, core, k as u64 * per, per.max(1)));
            }
        } else {
            specs.push(base(specs.len(), b, cores[i % cores.len()], 0, 0));
        }
    }
    Ok(specs)
}

fn on_prepared(index: usize, res: Result<Prepared, String>) {
    let go = RUN.with_borrow_mut(|run| {
        let run = run.as_mut()?;
        match res {
            Ok(p) => {
                run.prepared[index] = Some((p.thread, p.slot));
                run.waiting_finish += 1;
            }
            Err(e) => run.errors.push(e),
        }
        run.waiting_prepare -= 1;
        if run.waiting_prepare > 0 {
            return None;
        }
        let ok = run.errors.is_empty();
        if ok {
            print_start(&run.cfg);
        } else {
            for e in &run.errors {
                eprintln!("bdevperf: {e}");
            }
        }
        Some((ok, run.prepared.clone(), run.waiting_finish))
    });
    let Some((ok, prepared, waiting)) = go else {
        return;
    };
    for (thread, slot) in prepared.into_iter().flatten() {
        if ok {
            thread.send_msg(move || job::go(slot));
        } else {
            thread.send_msg(move || job::abort(slot));
        }
    }
    if waiting == 0 {
        complete();
    }
}

fn print_start(cfg: &RunConfig) {
    match cfg.run_secs {
        Some(s)
            if cfg.pattern.is_some()
                && matches!(cfg.workload, Workload::Write | Workload::Check) =>
        {
            println!("Running I/O over every block once (at most {s} seconds)...")
        }
        Some(s) => println!("Running I/O for {s} seconds..."),
        None => println!("Running I/O over every block once..."),
    }
    let _ = std::io::stdout().flush();
}

fn on_finished(result: JobResult) {
    let done = RUN.with_borrow_mut(|run| {
        let Some(run) = run.as_mut() else {
            return false;
        };
        run.results.push(result);
        run.waiting_finish -= 1;
        run.waiting_finish == 0 && run.waiting_prepare == 0
    });
    if done {
        complete();
    }
}

/// Every job reported: print, write the JSON, then exit or answer the RPC.
fn complete() {
    let Some(mut run) = RUN.with_borrow_mut(Option::take) else {
        return;
    };
    let started = run.errors.is_empty();
    let mut code = i32::from(!started);
    run.results.sort_by_key(|r| r.spec.index);
    if started {
        print!("{}", report::table(&run.results));
        let _ = std::io::stdout().flush();
    }
    for r in &run.results {
        // SPDK fails the run on a miscompare always, on an I/O error unless -f.
        if r.status == JobStatus::Failed || r.miscompares > 0 {
            code = 1;
        }
    }
    let doc = report::to_json(&run.results);
    if started && let Some(path) = &run.cfg.json_output {
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("bdevperf: cannot write {}: {e}", path.display());
            code = 1;
        }
    }
    match run.finish.take() {
        Some(Finish::Rpc(r)) => {
            if code == 0 {
                r.ok(doc);
            } else {
                let why = run
                    .errors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "I/O failed or data miscompared".into());
                r.err(rpc::RpcError::internal(format!("bdevperf failed: {why}")));
                app::stop(code);
            }
        }
        _ => app::stop(code),
    }
}
