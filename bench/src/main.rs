//! tidepool-bench: the load generator and the baseline responder tidepool is measured with.
//!
//! `http` drives keep-alive HTTP/1.1 load at any server and reports requests/s, latency
//! percentiles, status counts and errors; `compare-http` alternates the same load between two
//! servers; `ws` and `sse` measure real-time fan-out (one writer, N subscribers); `baseline` is
//! the minimal responder on tidepool-io that marks the ceiling; `chart` draws the SVG of a
//! `bench/compare` results file. See README.md for how to pin and read the numbers.

mod baseline;
mod chart;
mod cli;
mod compare;
mod http1;
mod load;
mod mqtt;
mod replication;
mod report;
mod request;
mod sse;
mod ws;

use anyhow::Result;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("mqtt-fanout") => return mqtt::fanout(&args[1..]),
        Some("mqtt-retained") => return mqtt::retained(&args[1..]),
        Some("mqtt-pairs") => return mqtt::pairs(&args[1..]),
        Some("mqtt-fanin") => return mqtt::fanin(&args[1..]),
        Some("replication-lag") => return replication::lag(&args[1..]),
        _ => {}
    }
    match cli::parse(&args)? {
        cli::Command::Help => print!("{}", cli::USAGE),
        cli::Command::Http {
            target,
            workload,
            json,
        } => {
            let report = load::run(&target, &workload)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.table());
            }
        }
        cli::Command::Compare {
            a,
            b,
            rounds,
            workload,
            json,
        } => {
            let summary = compare::run(&a, &b, rounds, &workload, json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", summary.table());
            }
        }
        cli::Command::FanOut { workload, json } => {
            let report = sse::run(&workload)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.table());
            }
        }
        cli::Command::Chart { input, output } => chart::run(&input, &output)?,
        cli::Command::Baseline {
            listen,
            cores,
            driver,
        } => baseline::run(listen, cores, driver)?,
    }
    Ok(())
}
