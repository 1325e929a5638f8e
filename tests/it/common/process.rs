//! ordersys modes as real child processes, for what only a process can
//! suffer: SIGKILL and SIGTERM.

use ordersys::settings::Settings;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    child: Child,
}

impl Process {
    /// Starts `ordersys <args>` with the test's database and broker.
    pub fn spawn(settings: &Settings, args: &[&str]) -> Process {
        Self::spawn_with(settings, args, &[])
    }

    /// Same, with extra environment variables.
    pub fn spawn_with(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_ordersys"))
            .args(args)
            .envs(env.iter().copied())
            .env("DATABASE_URL", &settings.database.url)
            .env("AMQP_URL", &settings.amqp.url)
            .env(
                "ORDERSYS__RETRY__INITIAL_BACKOFF_MS",
                settings.retry.initial_backoff_ms.to_string(),
            )
            .env(
                "ORDERSYS__RETRY__MAX_BACKOFF_MS",
                settings.retry.max_backoff_ms.to_string(),
            )
            .env(
                "ORDERSYS__SHUTDOWN__GRACE_SECS",
                settings.shutdown.grace_secs.to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start ordersys");
        Process { child }
    }

    /// A worker with `replicas` consumers on a free port.
    pub fn worker(settings: &Settings, replicas: u16) -> Process {
        Self::spawn(
            settings,
            &[
                "worker",
                "--replicas",
                &replicas.to_string(),
                "--bind",
                "127.0.0.1:0",
            ],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (waits at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
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
