//! ordersys modes as real child processes, for what only a process can
//! suffer (SIGKILL, SIGTERM) and for what must be measured apart from the
//! load generator (the benchmark).

use crate::{wait_for, Client};
use ordersys::settings::Settings;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    pub name: String,
    child: Child,
    /// Where its standard error goes, when captured.
    stderr: Option<std::path::PathBuf>,
    /// Where its HTTP port listens, when started by [`Process::serve`].
    pub addr: Option<SocketAddr>,
}

impl Process {
    /// Starts `ordersys <args>` with the test's database and broker.
    pub fn spawn(settings: &Settings, args: &[&str]) -> Process {
        Self::spawn_with(settings, args, &[])
    }

    /// Same, with extra environment variables.
    pub fn spawn_with(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start(settings, args, env, None)
    }

    /// Same, its standard error written to a file that [`Process::stderr`]
    /// reads back.
    pub fn spawn_capturing(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start(settings, args, env, Some(stderr_file()))
    }

    /// What the process wrote to standard error (when captured).
    pub fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    fn start(
        settings: &Settings,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Option<std::path::PathBuf>,
    ) -> Process {
        let retry = &settings.retry;
        let child = Command::new(binary())
            .args(args)
            // Before `env`, which may override it.
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .env("DATABASE_URL", &settings.database.url)
            .env("AMQP_URL", &settings.amqp.url)
            .env(
                "ORDERSYS__RETRY__INITIAL_BACKOFF_MS",
                retry.initial_backoff_ms.to_string(),
            )
            .env(
                "ORDERSYS__RETRY__MAX_BACKOFF_MS",
                retry.max_backoff_ms.to_string(),
            )
            .env(
                "ORDERSYS__SHUTDOWN__GRACE_SECS",
                settings.shutdown.grace_secs.to_string(),
            )
            .stdin(Stdio::null())
            .stderr(match &stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("stderr file")),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start ordersys");
        Process {
            name: args.first().copied().unwrap_or("ordersys").to_owned(),
            child,
            stderr,
            addr: None,
        }
    }

    /// Starts `ordersys <mode> --bind 127.0.0.1:<free port>`.
    pub fn serve(settings: &Settings, mode: &str, env: &[(&str, &str)]) -> Process {
        Self::serve_to(settings, mode, env, None)
    }

    fn serve_to(
        settings: &Settings,
        mode: &str,
        env: &[(&str, &str)],
        stderr: Option<std::path::PathBuf>,
    ) -> Process {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let bind = addr.to_string();
        let mut process = Self::start(settings, &[mode, "--bind", &bind], env, stderr);
        process.addr = Some(addr);
        process
    }

    /// Like `serve`, with standard error captured (see [`Process::stderr`]).
    pub fn serve_capturing(settings: &Settings, mode: &str, env: &[(&str, &str)]) -> Process {
        Self::serve_to(settings, mode, env, Some(stderr_file()))
    }

    /// A worker with `replicas` consumers on a free port.
    pub fn worker(settings: &Settings, replicas: u16) -> Process {
        let replicas = replicas.to_string();
        let args = ["worker", "--replicas", &replicas, "--bind", "127.0.0.1:0"];
        Self::spawn(settings, &args)
    }

    /// Waits until `/readyz` answers 200 (a process started by `serve`).
    pub async fn wait_ready(&self) {
        let client = Client::new_at(self.addr.expect("a process started by serve"));
        let what = format!("{} to be ready", self.name);
        wait_for(&what, Duration::from_secs(60), || async {
            let answer = client.try_get("/readyz").await?;
            (answer.0 == 200).then_some(())
        })
        .await
    }

    /// The address of a process started by `serve`.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("a process started by serve")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (waits at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.exit_status(timeout)
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`TERM`, `STOP`, `CONT`) and returns at once.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name}");
    }

    /// The exit status, once it exits (waits at most `timeout`).
    pub fn exit_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ordersys` binary cargo built beside the running test or benchmark
/// (`target/<profile>/ordersys`); `ORDERSYS_BIN` overrides it.
pub fn binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("ORDERSYS_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    profile_dir.join("ordersys")
}

/// A fresh file for a child's standard error.
fn stderr_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ordersys-{}.stderr", uuid::Uuid::new_v4()))
}

/// A port nothing listens on now, for a child process to bind. It is
/// drawn below Linux's ephemeral range (32768 and up), where the kernel
/// picks the ports of in-process servers bound to port 0 and of outgoing
/// connections: one of those could otherwise take it between this check
/// and the child's bind, and the test would talk to a stranger.
pub fn free_port() -> u16 {
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
