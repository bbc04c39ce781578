//! A/B comparison: the same HTTP workload run alternately against two targets (A B A B ...), so
//! slow drift of a shared, noisy machine falls on both sides alike. It owns the round order and
//! the summary (medians, the ratio of medians, the spread of per-round ratios); each run is
//! [`crate::load::run`].

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Target, Workload};
use crate::report::Report;

#[derive(Debug, Serialize)]
pub struct Round {
    pub round: usize,
    pub a_requests_per_s: f64,
    pub b_requests_per_s: f64,
    pub ratio: f64,
    pub a_p99_us: u64,
    pub b_p99_us: u64,
    pub a_errors: u64,
    pub b_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub a: String,
    pub b: String,
    pub rounds: Vec<Round>,
    pub a_requests_per_s_median: f64,
    pub b_requests_per_s_median: f64,
    /// Median of A over median of B.
    pub ratio: f64,
    /// Lowest and highest per-round A/B.
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// The last round's full reports, for status counts and latency detail.
    pub a_last: Option<Report>,
    pub b_last: Option<Report>,
}

/// Runs `rounds` A/B pairs, printing each round to stderr when `json`, else to stdout.
pub fn run(
    a: &Target,
    b: &Target,
    rounds: usize,
    workload: &Workload,
    json: bool,
) -> Result<Summary> {
    let mut out = Vec::with_capacity(rounds);
    let mut a_last = None;
    let mut b_last = None;
    for round in 1..=rounds {
        let ra = crate::load::run(a, workload)?;
        let rb = crate::load::run(b, workload)?;
        let line = format!(
            "round {round}: A {:>9.0} req/s p99 {:>6} µs | B {:>9.0} req/s p99 {:>6} µs | A/B {:.3}{}",
            ra.requests_per_s,
            ra.latency_us.p99,
            rb.requests_per_s,
            rb.latency_us.p99,
            ratio(ra.requests_per_s, rb.requests_per_s),
            if ra.errors.total() + rb.errors.total() > 0 {
                format!("  (errors A {} B {})", ra.errors.total(), rb.errors.total())
            } else {
                String::new()
            }
        );
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        out.push(Round {
            round,
            a_requests_per_s: ra.requests_per_s,
            b_requests_per_s: rb.requests_per_s,
            ratio: ratio(ra.requests_per_s, rb.requests_per_s),
            a_p99_us: ra.latency_us.p99,
            b_p99_us: rb.latency_us.p99,
            a_errors: ra.errors.total(),
            b_errors: rb.errors.total(),
        });
        a_last = Some(ra);
        b_last = Some(rb);
    }
    let a_median = median(out.iter().map(|r| r.a_requests_per_s).collect());
    let b_median = median(out.iter().map(|r| r.b_requests_per_s).collect());
    let ratios = out.iter().map(|r| r.ratio);
    Ok(Summary {
        a: a.host.clone(),
        b: b.host.clone(),
        a_requests_per_s_median: a_median,
        b_requests_per_s_median: b_median,
        ratio: ratio(a_median, b_median),
        ratio_min: ratios.clone().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.fold(f64::NEG_INFINITY, f64::max),
        rounds: out,
        a_last,
        b_last,
    })
}

impl Summary {
    pub fn table(&self) -> String {
        format!(
            "A {}: median {:.0} req/s\nB {}: median {:.0} req/s\nA/B {:.3} (rounds {:.3}–{:.3}, {} rounds)",
            self.a,
            self.a_requests_per_s_median,
            self.b,
            self.b_requests_per_s_median,
            self.ratio,
            self.ratio_min,
            self.ratio_max,
            self.rounds.len()
        )
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The median; the mean of the middle two for an even count.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(values: &[f64], expected: f64) {
        assert_eq!(median(values.to_vec()), expected, "{values:?}");
    }

    #[test]
    fn medians() {
        check(&[], 0.0);
        check(&[3.0], 3.0);
        check(&[5.0, 1.0, 3.0], 3.0);
        check(&[4.0, 1.0, 3.0, 2.0], 2.5);
    }
}
