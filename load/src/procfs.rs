//! Samples of another process (CPU time, RSS) and of the kernel (slab caches,
//! TCP buffer pages) from /proc.

use std::collections::HashMap;
use std::ffi::{c_int, c_long};
use std::time::Instant;

unsafe extern "C" {
    // sysconf(3) has no preconditions; std already links the C library.
    safe fn sysconf(name: c_int) -> c_long;
}

const SC_CLK_TCK: c_int = 2;
const SC_PAGESIZE: c_int = 30;

/// Clock ticks per second for /proc/PID/stat (usually 100).
pub fn clock_ticks() -> u64 {
    match sysconf(SC_CLK_TCK) {
        n if n > 0 => n as u64,
        _ => 100,
    }
}

pub fn page_size() -> u64 {
    match sysconf(SC_PAGESIZE) {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

/// CPU time of a process (all its threads), in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    pub user_ns: u64,
    pub sys_ns: u64,
    pub at: Instant,
}

impl Cpu {
    pub fn total_ns(&self) -> u64 {
        self.user_ns + self.sys_ns
    }
}

/// utime and stime (fields 14 and 15 of /proc/PID/stat).
pub fn cpu(pid: u32) -> Result<Cpu, String> {
    cpu_at(&format!("/proc/{pid}/stat"))
}

/// This process's own CPU time.
pub fn own_cpu() -> Result<Cpu, String> {
    cpu_at("/proc/self/stat")
}

fn cpu_at(path: &str) -> Result<Cpu, String> {
    let at = Instant::now();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) may contain spaces: count from its ')'.
    let rest = &text[text.rfind(')').ok_or_else(|| format!("{path}: no ')'"))? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {n} missing"))
    };
    let tick_ns = 1_000_000_000 / clock_ticks();
    Ok(Cpu {
        user_ns: field(14)? * tick_ns,
        sys_ns: field(15)? * tick_ns,
        at,
    })
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq,
/// steal; all CPUs), in nanoseconds, from /proc/stat.
pub fn host_busy_ns() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = text.lines().next().unwrap_or_default();
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        return Err("/proc/stat: short cpu line".into());
    }
    let ticks = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    Ok(ticks * (1_000_000_000 / clock_ticks()))
}

/// Resident set size in bytes (VmRSS of /proc/PID/status).
pub fn rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("{path}: no VmRSS"))
}

/// Bytes held by each slab cache (active objects × object size).
pub fn slabs() -> Result<HashMap<String, u64>, String> {
    let text = std::fs::read_to_string("/proc/slabinfo")
        .map_err(|e| format!("/proc/slabinfo unreadable: {e}"))?;
    let mut map = HashMap::new();
    for line in text.lines().skip(2) {
        let mut f = line.split_whitespace();
        let (Some(name), Some(active), Some(_num), Some(size)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if let (Ok(active), Ok(size)) = (active.parse::<u64>(), size.parse::<u64>()) {
            map.insert(name.to_owned(), active * size);
        }
    }
    Ok(map)
}

/// Pages of socket buffers held by TCP (`mem` of the TCP line in
/// /proc/net/sockstat), in bytes.
pub fn tcp_mem() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/net/sockstat")
        .map_err(|e| format!("/proc/net/sockstat: {e}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .ok_or("/proc/net/sockstat: no TCP line")?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            if let Some(pages) = it.next().and_then(|p| p.parse::<u64>().ok()) {
                return Ok(pages * page_size());
            }
        }
    }
    Err("/proc/net/sockstat: no TCP mem".into())
}

/// Per-cache growth between two slab samples, largest first, with the total.
pub fn slab_growth(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> (i64, Vec<(String, i64)>) {
    let mut deltas: Vec<(String, i64)> = after
        .iter()
        .map(|(name, &a)| {
            let b = before.get(name).copied().unwrap_or(0);
            (name.clone(), a as i64 - b as i64)
        })
        .filter(|(_, d)| *d != 0)
        .collect();
    let total = deltas.iter().map(|(_, d)| d).sum();
    deltas.sort_by_key(|(_, d)| -d);
    (total, deltas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_own_process() {
        let c = own_cpu().unwrap();
        assert!(c.total_ns() < 3_600 * 1_000_000_000);
        assert!(rss(std::process::id()).unwrap() > 0);
        assert!(clock_ticks() > 0);
    }
}
