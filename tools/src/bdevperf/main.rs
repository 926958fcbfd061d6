//! bdevperf: SPDK's block-device benchmark, with its flags and its results table, on pcache's
//! runtime; plus self-describing pattern writes and checks that survive restarts.

mod job;
mod pattern;
mod report;
mod run;

use anyhow::Context;
use clap::Parser;
use job::Workload;
use pattern::PatternSpec;
use poller::CpuMask;
use run::{Finish, RunConfig};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Workloads: read, write, randread, randwrite, rw, randrw (with -M), verify, flush, unmap,
write_zeroes, and check (with --pattern).

RPC: No RPC server is started unless -r is given (or -z, which listens on /var/tmp/spdk.sock
by default), as in current SPDK bdevperf, so several instances can run side by side.

Beyond SPDK's bdevperf:
  * -T may be repeated to name several bdevs.
  * Latency percentiles (p50, p99, p99.9) follow the max column; --json-output writes the results.

Patterns (--pattern SEED): every block written starts with a header (magic, seed, its own LBA,
version, CRC32C of the whole block) and the rest is derived from (seed, LBA, version), so a later
run can tell what each block holds.
  -w write --pattern S      writes every block of the range once, in order, then stops
  -w randwrite --pattern S  writes random blocks until -t ends
  -w check --pattern S      reads every block once and counts blocks_matching (seed S, right LBA,
                            and version V if --pattern-version is given), blocks_other_pattern
                            (a whole pattern block of another seed or version) and blocks_foreign
                            (zeroes, torn or garbage blocks, blocks of another LBA)
With -C each core covers its own slice of every bdev.";

#[derive(Parser, Debug)]
#[command(
    name = "bdevperf",
    version,
    about = "Block device benchmark (SPDK bdevperf-compatible flags)",
    after_help = AFTER_HELP
)]
struct Args {
    /// JSON config that creates the bdevs (SPDK format).
    #[arg(short = 'c', long = "json", value_name = "FILE")]
    json: PathBuf,
    /// I/O queue depth per job.
    #[arg(short = 'q', value_name = "DEPTH")]
    queue_depth: Option<u32>,
    /// I/O size in bytes; k, m, g suffixes are powers of 1024 (4k = 4096).
    #[arg(short = 'o', value_name = "SIZE", value_parser = parse_size)]
    io_size: Option<u32>,
    /// Workload type (see below).
    #[arg(short = 'w', value_name = "TYPE")]
    workload: Option<String>,
    /// Run time in seconds (optional for pattern write and check: they end when every block is
    /// covered).
    #[arg(short = 't', value_name = "SECONDS")]
    time: Option<u64>,
    /// Read percentage for rw and randrw (100 = all reads, 0 = all writes).
    #[arg(short = 'M', value_name = "PERCENT")]
    rw_mix: Option<u32>,
    /// Core mask for the reactors: hex (0x3) or list ([0,1]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// bdev to run against (repeatable). Default: every bdev that nothing has claimed.
    #[arg(short = 'T', value_name = "BDEV")]
    targets: Vec<String>,
    /// Every core drives every bdev (each core on its own slice). Default: one job per bdev,
    /// bdevs spread round-robin over the cores.
    #[arg(short = 'C')]
    every_core: bool,
    /// Keep going after I/O failures.
    #[arg(short = 'f')]
    continue_on_failure: bool,
    /// Write the results as JSON to FILE.
    #[arg(long = "json-output", value_name = "FILE")]
    json_output: Option<PathBuf>,
    /// Write or check self-describing blocks with this seed (decimal or 0x hex).
    #[arg(long = "pattern", value_name = "SEED", value_parser = parse_u64)]
    pattern: Option<u64>,
    /// Version stamped into pattern blocks (default 1); a check given it counts blocks of other
    /// versions as other_pattern.
    #[arg(long = "pattern-version", value_name = "N", value_parser = parse_u64)]
    pattern_version: Option<u64>,
    /// Let idle reactors sleep instead of busy-polling (for tests on few cores).
    #[arg(long = "idle-backoff")]
    idle_backoff: bool,
    /// Serve JSON-RPC on this socket. Default: none, so several instances can run at once.
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH")]
    rpc_socket: Option<PathBuf>,
    /// Start, then wait for the perform_tests RPC to run the tests.
    #[arg(short = 'z')]
    wait_for_tests: bool,
    /// Enable debug logs for a component (repeatable).
    #[arg(short = 'L', long = "logflag", value_name = "FLAG")]
    log_flags: Vec<String>,
}

/// `-o` as SPDK parses capacities: a number with an optional k/m/g suffix (and optional B/iB).
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        _ => (body, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid I/O size '{s}'"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 && v <= u32::MAX as u64 => Ok(v as u32),
        _ => Err(format!("invalid I/O size '{s}' (must be 1 byte to 4 GiB)")),
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    }
    .map_err(|_| format!("'{s}' is not a number"))
}

/// The test parameters before validation: the command line, overridden by perform_tests.
#[derive(Clone, Debug)]
struct TestParams {
    workload: Option<String>,
    queue_depth: Option<u32>,
    io_size: Option<u32>,
    time: Option<u64>,
    rw_mix: Option<u32>,
    targets: Vec<String>,
    every_core: bool,
    continue_on_failure: bool,
    json_output: Option<PathBuf>,
    pattern: Option<u64>,
    pattern_version: Option<u64>,
}

/// The most tasks (each with its own buffer) one job may keep in flight.
const MAX_QUEUE_DEPTH: u32 = 65536;

impl TestParams {
    fn from_args(a: &Args) -> TestParams {
        TestParams {
            workload: a.workload.clone(),
            queue_depth: a.queue_depth,
            io_size: a.io_size,
            time: a.time,
            rw_mix: a.rw_mix,
            targets: a.targets.clone(),
            every_core: a.every_core,
            continue_on_failure: a.continue_on_failure,
            json_output: a.json_output.clone(),
            pattern: a.pattern,
            pattern_version: a.pattern_version,
        }
    }

    /// Checks the parameters as SPDK's verify_test_params does, plus the pattern rules.
    fn validate(&self) -> Result<RunConfig, String> {
        let name = self.workload.as_deref().ok_or("-w <type> is required")?;
        let workload = Workload::parse(name)
            .ok_or_else(|| format!("-w must be one of ({}), got '{name}'", Workload::NAMES))?;
        let queue_depth = match self.queue_depth {
            None => return Err("-q <depth> is required".into()),
            Some(q) if q == 0 || q > MAX_QUEUE_DEPTH => {
                return Err(format!("-q must be between 1 and {MAX_QUEUE_DEPTH}"));
            }
            Some(q) => q,
        };
        let io_size = self.io_size.ok_or("-o <size> is required")?;
        let pattern = match (self.pattern, workload) {
            (None, Workload::Check) => return Err("-w check needs --pattern SEED".into()),
            (None, _) if self.pattern_version.is_some() => {
                return Err("--pattern-version needs --pattern SEED".into());
            }
            (None, _) => None,
            (Some(seed), Workload::Write | Workload::RandWrite | Workload::Check) => {
                Some(PatternSpec {
                    seed,
                    version: self.pattern_version.unwrap_or(1),
                    check_version: self.pattern_version.is_some(),
                })
            }
            (Some(_), w) => {
                return Err(format!(
                    "--pattern works with -w write, randwrite or check, not {}",
                    w.name()
                ));
            }
        };
        let covering =
            self.pattern.is_some() && matches!(workload, Workload::Write | Workload::Check);
        let run_secs = match self.time {
            Some(0) if !covering => return Err("-t must be greater than 0".into()),
            Some(0) | None if covering => None,
            None => return Err("-t <seconds> is required".into()),
            Some(t) => Some(t),
        };
        let read_pct = if workload.is_mixed() {
            match self.rw_mix {
                Some(p) if p <= 100 => p,
                _ => {
                    return Err(
                        "-M must be specified to value from 0 to 100 for rw or randrw".into(),
                    );
                }
            }
        } else {
            if self.rw_mix.is_some() {
                eprintln!(
                    "Ignoring -M option... Please use -M option only when using rw or randrw."
                );
            }
            match workload {
                Workload::Read | Workload::RandRead | Workload::Check => 100,
                _ => 0,
            }
        };
        Ok(RunConfig {
            workload,
            read_pct,
            queue_depth,
            io_size,
            run_secs,
            targets: self.targets.clone(),
            every_core: self.every_core,
            pattern,
            continue_on_failure: self.continue_on_failure,
            json_output: self.json_output.clone(),
        })
    }
}

/// perform_tests parameters (SPDK's names; unknown members are ignored as SPDK's relaxed decode
/// does).
#[derive(Deserialize, Debug, Default)]
struct PerformTests {
    time_in_sec: Option<u64>,
    workload_type: Option<String>,
    queue_depth: Option<u32>,
    /// A string in SPDK ("4096", "4k"); a number is accepted too.
    io_size: Option<Value>,
    rw_percentage: Option<u32>,
}

impl PerformTests {
    fn apply(self, base: &TestParams) -> Result<TestParams, String> {
        let mut p = base.clone();
        if let Some(t) = self.time_in_sec.filter(|t| *t > 0) {
            p.time = Some(t);
        }
        if let Some(w) = self.workload_type {
            p.workload = Some(w);
        }
        if let Some(q) = self.queue_depth.filter(|q| *q > 0) {
            p.queue_depth = Some(q);
        }
        match self.io_size {
            Some(Value::String(s)) => p.io_size = Some(parse_size(&s)?),
            Some(Value::Number(n)) => {
                p.io_size = Some(parse_size(&n.to_string())?);
            }
            Some(Value::Null) | None => {}
            Some(_) => return Err("io_size must be a string or a number".into()),
        }
        if let Some(m) = self.rw_percentage {
            p.rw_mix = Some(m);
        }
        Ok(p)
    }
}

fn register_perform_tests(base: TestParams) {
    rpc::register(
        "perform_tests",
        rpc::StateMask::RUNTIME,
        move |p: PerformTests, r: rpc::Responder| {
            if run::in_progress() {
                return r.err(rpc::RpcError::internal(rpc::error::strerror(
                    libc::EINPROGRESS,
                )));
            }
            let cfg = match p.apply(&base).and_then(|p| p.validate()) {
                Ok(cfg) => cfg,
                Err(e) => return r.err(rpc::RpcError::invalid_params(e)),
            };
            if let Err(e) = run::start(cfg, Finish::Rpc(r)) {
                eprintln!("bdevperf: {e}");
            }
        },
    );
}

fn main() {
    let args = Args::parse();
    app::init_logging(&args.log_flags);
    let code = match run_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bdevperf: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run_main(args: Args) -> anyhow::Result<i32> {
    let params = TestParams::from_args(&args);
    // Bad parameters are reported before anything starts (with -z they arrive by RPC).
    let cfg = if args.wait_for_tests {
        None
    } else {
        Some(params.validate().map_err(anyhow::Error::msg)?)
    };
    let cpumask = CpuMask::parse(&args.cpumask).context("-m")?;
    let rpc_socket = args.rpc_socket.clone().or_else(|| {
        args.wait_for_tests
            .then(|| PathBuf::from(app::DEFAULT_RPC_SOCKET))
    });
    if args.wait_for_tests {
        register_perform_tests(params);
    }
    let opts = app::AppOptions {
        name: "bdevperf".into(),
        cpumask,
        json_config: Some(args.json.clone()),
        rpc_socket: rpc_socket.clone(),
        rpc_mode: 0o600,
        wait_for_rpc: false,
        idle_backoff: args.idle_backoff,
    };
    app::run(opts, move || match cfg {
        Some(cfg) => {
            if let Err(e) = run::start(cfg, Finish::Exit) {
                eprintln!("bdevperf: {e}");
                app::stop(1);
            }
        }
        None => println!(
            "Waiting for the perform_tests RPC on {}",
            rpc_socket
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_spdk_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("128kb"), Ok(128 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("4x").is_err());
        assert!(parse_size("8g").is_err());
    }

    fn params(w: &str) -> TestParams {
        TestParams {
            workload: Some(w.into()),
            queue_depth: Some(8),
            io_size: Some(4096),
            time: Some(1),
            rw_mix: None,
            targets: Vec::new(),
            every_core: false,
            continue_on_failure: false,
            json_output: None,
            pattern: None,
            pattern_version: None,
        }
    }

    #[test]
    fn validation_follows_spdk_and_the_pattern_rules() {
        assert!(params("randread").validate().is_ok());
        assert!(params("bogus").validate().is_err());
        assert!(params("rw").validate().is_err(), "rw needs -M");
        let mut p = params("randrw");
        p.rw_mix = Some(70);
        assert_eq!(p.validate().unwrap().read_pct, 70);
        assert!(params("check").validate().is_err(), "check needs --pattern");
        let mut p = params("check");
        p.pattern = Some(5);
        p.time = None;
        let c = p.validate().unwrap();
        assert_eq!(c.run_secs, None);
        assert!(!c.pattern.unwrap().check_version);
        let mut p = params("read");
        p.pattern = Some(5);
        assert!(p.validate().is_err(), "no pattern on plain reads");
        let mut p = params("randwrite");
        p.pattern = Some(5);
        p.time = None;
        assert!(p.validate().is_err(), "randwrite --pattern is time-bounded");
        let mut p = params("randread");
        p.time = None;
        assert!(p.validate().is_err());
    }
}
