//! pcache_tgt: the storage target, started like spdk_tgt.

use clap::Parser;
use poller::CpuMask;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pcache_tgt",
    version,
    about = "pcache storage target (spdk_tgt-compatible flags)"
)]
struct Args {
    /// Core mask for reactors: hex (0x3) or list ([0,1]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// RPC listen socket path.
    #[arg(short = 'r', long = "rpc-socket", default_value = app::DEFAULT_RPC_SOCKET)]
    rpc_socket: PathBuf,
    /// RPC socket permissions, octal (default 600).
    #[arg(long = "rpc-mode", default_value = "600")]
    rpc_mode: String,
    /// JSON config file (SPDK format).
    #[arg(short = 'c', long = "json")]
    json: Option<PathBuf>,
    /// Wait for framework_start_init over RPC before initialising subsystems.
    #[arg(long = "wait-for-rpc")]
    wait_for_rpc: bool,
    /// Enable debug logs for a component (repeatable).
    #[arg(short = 'L', long = "logflag")]
    log_flags: Vec<String>,
    /// Let idle reactors sleep instead of busy-polling (for tests on few cores).
    #[arg(long = "idle-backoff")]
    idle_backoff: bool,
}

fn main() {
    let args = Args::parse();
    app::init_logging(&args.log_flags);
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pcache_tgt: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<i32> {
    let rpc_mode = u32::from_str_radix(&args.rpc_mode, 8)
        .map_err(|_| anyhow::anyhow!("--rpc-mode must be octal, got {}", args.rpc_mode))?;
    let opts = app::AppOptions {
        name: "pcache_tgt".into(),
        cpumask: CpuMask::parse(&args.cpumask)?,
        json_config: args.json,
        rpc_socket: Some(args.rpc_socket),
        rpc_mode,
        wait_for_rpc: args.wait_for_rpc,
        idle_backoff: args.idle_backoff,
    };
    app::run(opts, || tracing::info!("pcache_tgt ready"))
}
