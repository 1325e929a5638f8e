//! The process's own metrics, read from `/proc` at each scrape, under the
//! names Prometheus's client libraries use (`process_*`): resident and
//! virtual memory, CPU seconds, open and allowed file descriptors, start
//! time. Elsewhere than Linux they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/self/stat`'s times: 100 on every Linux
/// platform (`USER_HZ`), as Prometheus's own procfs library assumes.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub struct Process;

impl Process {
    pub fn new() -> Process {
        Process
    }
}

/// What `/proc` says now; a field it could not read is `None`.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = read();
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(seconds) = r.start_time_seconds {
            let gauge = ConstGauge::new(seconds);
            let help = "Start time of the process since the Unix epoch in seconds";
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                help,
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Some(seconds) = r.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let help = "Total user and system CPU time spent in seconds";
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn read() -> Reading {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as i64);
    Reading {
        open_fds,
        ..parse(&stat, &status, &limits, &boot)
    }
}

#[cfg(not(target_os = "linux"))]
fn read() -> Reading {
    Reading::default()
}

/// The fields of `/proc/self/{stat,status,limits}` and `/proc/stat`.
fn parse(stat: &str, status: &str, limits: &str, boot: &str) -> Reading {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that matter come after its last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Numbered from field 3 (state) = index 0.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Some((utime + stime) / TICKS_PER_SECOND),
        _ => None,
    };
    let boot_time = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot + ticks / TICKS_PER_SECOND),
        _ => None,
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .map(|k| k * 1024)
    };
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<i64>().ok());
    Reading {
        cpu_seconds,
        start_time_seconds,
        resident_bytes: kib("VmRSS:"),
        virtual_bytes: kib("VmSize:"),
        open_fds: None,
        max_fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_field_by_field() {
        let stat = "4242 (ord sys) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    9 0 1200 1000000 500 18446744073709551615";
        let status = "Name:\tordersys\nVmSize:\t  200000 kB\nVmRSS:\t    8192 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 4096                 files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let r = parse(stat, status, limits, boot);
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.start_time_seconds, Some(1_700_000_012.0));
        assert_eq!(r.resident_bytes, Some(8192 * 1024));
        assert_eq!(r.virtual_bytes, Some(200_000 * 1024));
        assert_eq!(r.max_fds, Some(1024));
        assert_eq!(parse("", "", "", ""), Reading::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let r = read();
        assert!(r.resident_bytes.unwrap() > 0);
        assert!(r.open_fds.unwrap() >= 3);
        assert!(r.cpu_seconds.is_some() && r.start_time_seconds.is_some());
    }
}
