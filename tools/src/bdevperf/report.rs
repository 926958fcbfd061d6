//! The results: SPDK's table on stdout (plus latency percentiles and pattern counts) and the JSON
//! document `--json-output` writes and `perform_tests` answers.

use crate::job::{JobResult, JobStatus, Workload, new_histogram};
use hdrhistogram::Histogram;
use poller::CpuMask;
use serde_json::{Map, Value, json};

/// The figures of one table line.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub runtime_s: f64,
    pub iops: f64,
    pub mibps: f64,
    pub fails_per_s: f64,
    pub timeouts_per_s: f64,
    pub avg_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

fn us(ticks: u64) -> f64 {
    poller::time::ticks_to_us(ticks)
}

fn latency(f: &mut Figures, hist: &Histogram<u64>, sum_ticks: u64, ios: u64) {
    if hist.is_empty() || ios == 0 {
        return;
    }
    f.avg_us = us(sum_ticks) / ios as f64;
    f.min_us = us(hist.min());
    f.max_us = us(hist.max());
    f.p50_us = us(hist.value_at_quantile(0.50));
    f.p99_us = us(hist.value_at_quantile(0.99));
    f.p999_us = us(hist.value_at_quantile(0.999));
}

pub fn figures(r: &JobResult) -> Figures {
    let mut f = Figures {
        runtime_s: r.runtime_s,
        ..Default::default()
    };
    if r.runtime_s > 0.0 {
        f.iops = r.io_completed as f64 / r.runtime_s;
        f.mibps = f.iops * r.spec.io_size as f64 / (1024.0 * 1024.0);
        f.fails_per_s = r.io_failed as f64 / r.runtime_s;
    }
    latency(&mut f, &r.hist, r.lat_sum_ticks, r.io_completed);
    f
}

/// The Total line: rates add up, latency comes from all jobs' samples together.
pub fn total(results: &[JobResult]) -> Figures {
    let mut f = Figures::default();
    let mut hist = new_histogram();
    let (mut sum, mut ios) = (0u64, 0u64);
    for r in results {
        let j = figures(r);
        f.runtime_s = f.runtime_s.max(j.runtime_s);
        f.iops += j.iops;
        f.mibps += j.mibps;
        f.fails_per_s += j.fails_per_s;
        let _ = hist.add(&r.hist);
        sum += r.lat_sum_ticks;
        ios += r.io_completed;
    }
    latency(&mut f, &hist, sum, ios);
    f
}

fn core_mask(r: &JobResult) -> String {
    CpuMask::single(r.spec.core).to_hex()
}

fn job_header(r: &JobResult) -> String {
    let s = &r.spec;
    let mask = core_mask(r);
    if s.workload.is_mixed() {
        format!(
            "Job: {} (Core Mask {mask}, workload: {}, percentage: {}, depth: {}, IO size: {})",
            s.bdev,
            s.workload.name(),
            s.read_pct,
            s.queue_depth,
            s.io_size
        )
    } else {
        format!(
            "Job: {} (Core Mask {mask}, workload: {}, depth: {}, IO size: {})",
            s.bdev,
            s.workload.name(),
            s.queue_depth,
            s.io_size
        )
    }
}

fn columns(f: &Figures) -> String {
    format!(
        "{:10.2} {:10.2} {:8.2} {:10.2} {:10.2} {:10.2} {:10.2} {:10.2} {:10.2}",
        f.mibps,
        f.fails_per_s,
        f.timeouts_per_s,
        f.avg_us,
        f.min_us,
        f.max_us,
        f.p50_us,
        f.p99_us,
        f.p999_us
    )
}

/// The table as SPDK's bdevperf prints it, with p50/p99/p99.9 columns after max.
pub fn table(results: &[JobResult]) -> String {
    let mut out = String::new();
    if results.iter().any(|r| r.status == JobStatus::Terminated) {
        let secs = results.iter().map(|r| r.runtime_s).fold(0.0, f64::max);
        out.push_str(&format!(
            "Received shutdown signal, test time was about {secs:.6} seconds\n"
        ));
    }
    out.push_str(&format!("\n{:>107}\n", "Latency(us)"));
    out.push_str(&format!(
        " {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max",
        "p50",
        "p99",
        "p99.9"
    ));
    for r in results {
        let f = figures(r);
        out.push_str(&job_header(r));
        out.push('\n');
        if r.status == JobStatus::Failed {
            out.push_str(&format!(
                "Job: {} ended in about {:.2} seconds with error\n",
                r.spec.bdev, r.runtime_s
            ));
        }
        if r.spec.workload == Workload::Verify {
            out.push_str(&format!(
                "\t Verification LBA range: start 0x{:x} length 0x{:x}\n",
                r.range.0, r.range.1
            ));
        }
        out.push_str(&format!(
            "\t {:<20}: {:10.2} {:10.2} {}\n",
            r.spec.bdev,
            f.runtime_s,
            f.iops,
            columns(&f)
        ));
        out.push_str(&pattern_lines(r));
    }
    let t = total(results);
    out.push_str(&format!(" {}\n", "=".repeat(148)));
    out.push_str(&format!(
        " {:<28}: {:>10} {:10.2} {}\n",
        "Total",
        "",
        t.iops,
        columns(&t)
    ));
    out
}

/// The lines a pattern job adds under its figures; miscompares and foreign blocks stand out.
fn pattern_lines(r: &JobResult) -> String {
    let mut out = String::new();
    if r.miscompares > 0 {
        out.push_str(&format!(
            "\t *** {} MISCOMPARE(S) on {}: data read back differs from data written ***\n",
            r.miscompares, r.spec.bdev
        ));
    }
    let Some(p) = r.spec.pattern else {
        return out;
    };
    let version = if p.check_version || r.spec.workload != Workload::Check {
        format!(", version {}", p.version)
    } else {
        String::new()
    };
    let covered = r.blocks_covered.unwrap_or(0);
    match (&r.check, r.spec.workload) {
        (Some(c), _) => {
            out.push_str(&format!(
                "\t Pattern check (seed {}{version}): {covered} blocks read: matching {}, other pattern {}, foreign {}\n",
                p.seed, c.matching, c.other_pattern, c.foreign
            ));
            if c.foreign > 0 {
                let lbas: Vec<String> = c.first_foreign.iter().map(u64::to_string).collect();
                out.push_str(&format!(
                    "\t *** {} FOREIGN BLOCK(S); first at LBA {} ***\n",
                    c.foreign,
                    lbas.join(", ")
                ));
            }
        }
        (None, Workload::Write) => out.push_str(&format!(
            "\t Pattern write (seed {}{version}): {covered} of {} blocks written\n",
            p.seed, r.range.1
        )),
        _ => {}
    }
    if r.blocks_covered.is_some() && covered < r.range.1 {
        out.push_str(&format!(
            "\t WARNING: only {covered} of {} blocks covered (LBA {}..{}) before the run ended\n",
            r.range.1,
            r.range.0,
            r.range.0 + r.range.1
        ));
    }
    out
}

/// One job's JSON object: the brief's names, plus SPDK's for the same values.
pub fn job_json(r: &JobResult) -> Value {
    let f = figures(r);
    let s = &r.spec;
    let mut o = Map::new();
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    put("job", json!(s.bdev));
    put("bdev", json!(s.bdev));
    put("core_mask", json!(core_mask(r)));
    put("workload", json!(s.workload.name()));
    if s.workload.is_mixed() {
        put("percentage", json!(s.read_pct));
    }
    put("status", json!(r.status.name()));
    if s.workload == Workload::Verify {
        put(
            "verify_range",
            json!({"start": r.range.0, "length": r.range.1}),
        );
    }
    put("queue_depth", json!(s.queue_depth));
    put("io_size", json!(s.io_size));
    put("runtime", json!(f.runtime_s));
    put("iops", json!(f.iops));
    put("mibps", json!(f.mibps));
    put("io_failed", json!(r.io_failed));
    put("io_timeout", json!(0));
    put("fails", json!(f.fails_per_s));
    put("avg_us", json!(f.avg_us));
    put("min_us", json!(f.min_us));
    put("max_us", json!(f.max_us));
    put("p50_us", json!(f.p50_us));
    put("p99_us", json!(f.p99_us));
    put("p999_us", json!(f.p999_us));
    put("avg_latency_us", json!(f.avg_us));
    put("min_latency_us", json!(f.min_us));
    put("max_latency_us", json!(f.max_us));
    put("io_completed", json!(r.io_completed));
    put("miscompares", json!(r.miscompares));
    put("block_size", json!(r.block_size));
    put("range", json!({"start": r.range.0, "length": r.range.1}));
    if let Some(p) = s.pattern {
        put("pattern_seed", json!(p.seed));
        put("pattern_version", json!(p.version));
    }
    if let Some(b) = r.blocks_covered {
        put("blocks_covered", json!(b));
    }
    if let Some(c) = &r.check {
        put("blocks_matching", json!(c.matching));
        put("blocks_other_pattern", json!(c.other_pattern));
        put("blocks_foreign", json!(c.foreign));
        put("first_foreign_lbas", json!(c.first_foreign));
    }
    Value::Object(o)
}

/// `{"results": [...], "core_count": n}`, as SPDK's perform_tests answers.
pub fn to_json(results: &[JobResult]) -> Value {
    let mut cores: Vec<u32> = results.iter().map(|r| r.spec.core).collect();
    cores.sort_unstable();
    cores.dedup();
    json!({
        "results": results.iter().map(job_json).collect::<Vec<_>>(),
        "core_count": cores.len(),
    })
}
