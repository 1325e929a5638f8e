//! CPU time per party (each ordersys process, PostgreSQL, RabbitMQ, the
//! load generator), from /proc, to say where a step's cores went.

use std::process::Command;

/// CPU time used so far, per party: each ordersys process, PostgreSQL (all
/// its processes), RabbitMQ (the Erlang VM), this load generator.
pub struct CpuSample(Vec<(String, f64)>);

impl CpuSample {
    pub fn take(services: &[(&str, u32)]) -> CpuSample {
        let ticks: f64 = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        let mut parties: Vec<(String, f64)> = services
            .iter()
            .map(|(name, _)| (name.to_string(), 0.0))
            .chain(
                ["postgres", "rabbitmq", "load generator", "other"].map(|n| (n.to_string(), 0.0)),
            )
            .collect();
        let me = std::process::id();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid …": after the comm, utime is the 12th field.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let used = fields
                .get(11)
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0)
                + fields
                    .get(12)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
            let party = if let Some((name, _)) = services.iter().find(|(_, p)| *p == pid) {
                name.to_string()
            } else if pid == me {
                "load generator".into()
            } else if comm == "postgres" {
                "postgres".into()
            } else if comm.starts_with("beam") || comm == "epmd" || comm == "erl_child_setup" {
                "rabbitmq".into()
            } else {
                "other".into()
            };
            if let Some(slot) = parties.iter_mut().find(|(n, _)| *n == party) {
                slot.1 += used / ticks;
            }
        }
        CpuSample(parties)
    }

    /// Shares of one core between `earlier` and this sample, over `secs`.
    pub fn since(&self, earlier: &CpuSample, secs: f64) -> String {
        self.0
            .iter()
            .zip(&earlier.0)
            .map(|((name, now), (_, then))| format!("{name} {:.0}%", (now - then) / secs * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
