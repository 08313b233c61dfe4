//! `report`: JSON lines from several runs → one markdown table, best of the
//! rounds per (scenario, server), with ratios to a baseline server.

use std::io::BufRead;

use crate::cli::ReportArgs;
use crate::report::{RunReport, bytes, int, num, us};

/// Best figures of one server in one scenario.
#[derive(Default)]
struct Best {
    runs: usize,
    failed: usize,
    /// Runs during which other processes used over 10 % of a core.
    disturbed: usize,
    /// echo/rate: CPU ns/msg (user, sys) of every run.
    all_cpu: Vec<(f64, f64, f64)>,
    msgs_per_s: Option<f64>,
    /// (p50, p99) of the run with the lowest p99.
    lat: Option<(f64, f64)>,
    server_cpu_pct: Option<f64>,
    /// idle: bytes/conn, kernel slab bytes/conn, connections.
    idle: Option<(f64, Option<f64>, u64)>,
    /// churn: CPU µs/handshake (user, sys).
    hs_cpu: Option<(f64, f64, f64)>,
    hs_per_s: Option<f64>,
    rate_target: Option<f64>,
}

fn min_by<T: Copy>(slot: &mut Option<T>, new: T, key: impl Fn(&T) -> f64) {
    if slot.as_ref().is_none_or(|old| key(&new) < key(old)) {
        *slot = Some(new);
    }
}

fn max_of(slot: &mut Option<f64>, new: f64) {
    if slot.is_none_or(|old| new > old) {
        *slot = Some(new);
    }
}

impl Best {
    fn add(&mut self, r: &RunReport) {
        self.runs += 1;
        if !r.ok {
            self.failed += 1;
        }
        if r.other_cpu_pct.is_some_and(|o| o > 10.0) {
            self.disturbed += 1;
        }
        if let (Some(c), Some(u), Some(s)) = (
            r.server_cpu_ns_per_msg,
            r.server_user_ns_per_msg,
            r.server_sys_ns_per_msg,
        ) {
            self.all_cpu.push((c, u, s));
        }
        if let Some(m) = r.msgs_per_s {
            max_of(&mut self.msgs_per_s, m);
        }
        if let Some(l) = &r.lat_us {
            min_by(&mut self.lat, (l.p50, l.p99), |t| t.1);
        }
        if let Some(p) = r.server_cpu_pct {
            max_of(&mut self.server_cpu_pct, p);
        }
        if let (Some(b), Some(c)) = (r.bytes_per_conn, r.connected) {
            min_by(&mut self.idle, (b, r.kernel_slab_bytes_per_conn, c), |t| {
                t.0
            });
        }
        if let (Some(c), Some(u), Some(s)) = (
            r.server_cpu_us_per_handshake,
            r.server_user_us_per_handshake,
            r.server_sys_us_per_handshake,
        ) {
            min_by(&mut self.hs_cpu, (c, u, s), |t| t.0);
        }
        if let Some(h) = r.handshakes_per_s {
            max_of(&mut self.hs_per_s, h);
        }
        if let Some(t) = r.rate_target {
            max_of(&mut self.rate_target, t);
        }
    }
}

/// Fewest rounds for which the table also gives medians: with two, the
/// median is only their mean.
const MEDIAN_FROM: usize = 3;

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Best {
    /// CPU ns/msg (user, sys) of the cheapest run (the first, on a tie).
    fn cpu(&self) -> Option<(f64, f64, f64)> {
        self.all_cpu
            .iter()
            .copied()
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// Medians over the runs of CPU, user and system time per message, each
    /// taken independently, if there were enough runs.
    fn median_cpu(&self) -> Option<(f64, f64, f64)> {
        if self.all_cpu.len() < MEDIAN_FROM {
            return None;
        }
        let of = |f: fn(&(f64, f64, f64)) -> f64| median(self.all_cpu.iter().map(f).collect());
        Some((of(|t| t.0)?, of(|t| t.1)?, of(|t| t.2)?))
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "—".into(),
    }
}

fn dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

pub fn run(a: ReportArgs) -> Result<String, String> {
    let file = std::fs::File::open(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?;
    let mut runs: Vec<RunReport> = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", a.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        runs.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: {e}", a.file.display(), n + 1))?,
        );
    }
    // Scenarios and servers in order of first appearance.
    let mut scenarios: Vec<(String, String)> = Vec::new();
    let mut servers: Vec<String> = Vec::new();
    for r in &runs {
        let sc = r.scenario.clone().unwrap_or_else(|| r.mode.clone());
        if !scenarios.iter().any(|(s, _)| *s == sc) {
            scenarios.push((sc, r.mode.clone()));
        }
        let sv = r.server.clone().unwrap_or_else(|| "?".into());
        if !servers.contains(&sv) {
            servers.push(sv);
        }
    }
    let best = |sc: &str, sv: &str| {
        let mut b = Best::default();
        for r in &runs {
            if r.scenario.as_deref().unwrap_or(&r.mode) == sc
                && r.server.as_deref().unwrap_or("?") == sv
            {
                b.add(r);
            }
        }
        b
    };
    let base = &a.baseline;
    let mut out = format!(
        "| scenario | server | cost | × {base} | throughput | × {base} | detail |\n|---|---|---|---|---|---|---|\n"
    );
    for (sc, mode) in &scenarios {
        let b0 = best(sc, base);
        for sv in &servers {
            let b = best(sc, sv);
            if b.runs == 0 {
                continue;
            }
            let mut flag = String::new();
            if b.failed > 0 {
                flag.push_str(&format!(" ⚠ {}/{} runs with errors", b.failed, b.runs));
            }
            if b.disturbed > 0 {
                flag.push_str(&format!(
                    " ⚠ {}/{} runs shared the machine with other work",
                    b.disturbed, b.runs
                ));
            }
            let row = match mode.as_str() {
                "idle" => {
                    let v = b.idle.map(|t| t.0);
                    [
                        dash(b.idle, |(bpc, _, _)| format!("{} / conn RSS", bytes(bpc))),
                        ratio(v, b0.idle.map(|t| t.0)),
                        dash(b.idle, |(_, _, c)| format!("{} conns", int(c))),
                        String::new(),
                        dash(b.idle.and_then(|t| t.1), |k| {
                            format!("kernel slab {} / conn (both ends)", bytes(k))
                        }),
                    ]
                }
                "churn" => [
                    dash(b.hs_cpu, |(c, u, s)| {
                        format!("{c:.1} µs/handshake ({u:.1} / {s:.1})")
                    }),
                    ratio(b.hs_cpu.map(|t| t.0), b0.hs_cpu.map(|t| t.0)),
                    dash(b.hs_per_s, |h| format!("{} handshakes/s", num(h))),
                    ratio(b.hs_per_s, b0.hs_per_s),
                    dash(b.lat, |(p50, p99)| {
                        format!("cycle p50 {} / p99 {} µs", num(p50), num(p99))
                    }),
                ],
                "rate" => [
                    dash(b.lat, |(_, p99)| format!("p99 {} µs", us(p99))),
                    ratio(b.lat.map(|t| t.1), b0.lat.map(|t| t.1)),
                    dash(b.msgs_per_s, |m| format!("{} msgs/s", num(m))),
                    String::new(),
                    format!(
                        "p50 {} µs; target {} msgs/s; {} ns CPU/msg",
                        dash(b.lat, |(p50, _)| us(p50)),
                        dash(b.rate_target, num),
                        dash(b.cpu(), |(c, _, _)| num(c)),
                    ),
                ],
                _ => [
                    dash(b.cpu(), |(c, u, s)| {
                        format!("{} ns/msg ({} / {})", num(c), num(u), num(s))
                    }),
                    ratio(b.cpu().map(|t| t.0), b0.cpu().map(|t| t.0)),
                    dash(b.msgs_per_s, |m| format!("{} msgs/s", num(m))),
                    ratio(b.msgs_per_s, b0.msgs_per_s),
                    format!(
                        "p50 {} / p99 {} µs; server CPU {} %{}",
                        dash(b.lat, |(p50, _)| us(p50)),
                        dash(b.lat, |(_, p99)| us(p99)),
                        dash(b.server_cpu_pct, |p| format!("{p:.0}")),
                        b.median_cpu().map_or_else(String::new, |(c, u, s)| format!(
                            "; median of {}: {} ns/msg ({} / {}), {}",
                            b.all_cpu.len(),
                            num(c),
                            num(u),
                            num(s),
                            ratio(Some(c), b0.median_cpu().map(|t| t.0)),
                        )),
                    ),
                ],
            };
            out.push_str(&format!(
                "| {sc} | {sv} | {} | {} | {} | {} | {}{flag} |\n",
                row[0], row[1], row[2], row[3], row[4]
            ));
        }
    }
    let rounds = rounds(&runs);
    out.push_str(&format!(
        "\nBest of {rounds} run(s) per cell: lowest cost, highest throughput, each taken \
         independently. Cost is the server's CPU time (user / sys) per message or \
         per handshake cycle; for idle, server RSS growth per connection; for rate, \
         p99 latency from the intended send time. Ratios are against {base} \
         (below 1.00× costs less).{}\n",
        if rounds >= MEDIAN_FROM {
            format!(
                " From {MEDIAN_FROM} rounds on, the detail column also gives the \
                 median CPU time per message over the rounds (total, user and \
                 system each taken on its own) and its ratio to the baseline's \
                 median: on a noisy machine the best round is partly luck, and the \
                 user/system split of one round is sampled from the kernel's timer \
                 ticks (250 or 1000 a second), so it varies more than the total."
            )
        } else {
            String::new()
        },
    ));
    Ok(out)
}

/// Most runs of one (scenario, server) pair.
fn rounds(runs: &[RunReport]) -> usize {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in runs {
        let key = format!("{:?}/{:?}", r.scenario, r.server);
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    counts.iter().map(|(_, n)| *n).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn medians_need_three_runs_and_are_taken_per_figure() {
        let mut b = Best {
            all_cpu: vec![(10.0, 1.0, 9.0), (30.0, 5.0, 25.0)],
            ..Best::default()
        };
        assert_eq!(b.median_cpu(), None);
        b.all_cpu.push((20.0, 9.0, 11.0));
        // Not the run with the median total: each figure on its own.
        assert_eq!(b.median_cpu(), Some((20.0, 5.0, 11.0)));
    }
}
