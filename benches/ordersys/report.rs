//! The benchmark's table: each figure with its ceiling, ratio and target,
//! and the machine it was measured on.

use std::fmt::Write as _;
use std::process::Command;

struct Row {
    figure: String,
    value: String,
    ceiling: String,
    ratio: String,
    target: String,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(
        &mut self,
        figure: &str,
        value: String,
        ceiling: Option<(f64, &str)>,
        of: f64,
        target: &str,
    ) {
        let (ceiling, ratio) = match ceiling {
            Some((c, unit)) if c.is_finite() && c > 0.0 => {
                (format!("{c:.0} {unit}"), format!("{:.0}%", 100.0 * of / c))
            }
            _ => ("—".into(), "—".into()),
        };
        self.rows.push(Row {
            figure: figure.into(),
            value,
            ceiling,
            ratio,
            target: target.into(),
        });
    }

    pub fn table(&self) -> String {
        let mut out =
            String::from("| figure | value | ceiling | ratio | target |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.figure, r.value, r.ceiling, r.ratio, r.target
            );
        }
        out
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let version = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "{cores} cores ({cpu}), {memory} RAM; {}; RabbitMQ {}; rustc {}; PostgreSQL, RabbitMQ, the three ordersys \
         processes and the load generator all share the machine",
        version("psql", &["--version"]),
        version("rabbitmqctl", &["version"]),
        version("rustc", &["--version"]).trim_start_matches("rustc "),
    )
}

/// Writes the table of a full run to docs/benchmarks.md.
pub fn write_doc(report: &Report) {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let doc = format!(
        "# ordersys benchmarks\n\nProduced by `cargo bench --bench ordersys` on {now}; overwritten by each full run. \
         What bounds each figure and what would move it: [performance.md](performance.md).\n\nMachine: {}.\n\n{}\n{}\n",
        machine(),
        report.table(),
        report.notes.join("\n")
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    std::fs::write(path, doc).expect("write docs/benchmarks.md");
    eprintln!("wrote {path}");
}
