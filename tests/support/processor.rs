//! `mallquest run` as a child process, with a config written for a test broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub config: PathBuf,
    pub store: PathBuf,
    /// The subcommand: `run` (default) or `rebuild`.
    pub command: &'static str,
    /// Extra environment of the next starts (`MALLQUEST_CRASH_AT`).
    pub env: Vec<(&'static str, String)>,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

/// Writes a config for a test broker; returns (config path, store path, HTTP address).
pub fn write_config(dir: &Path, bootstrap: &str, rules_extra: &str) -> (PathBuf, PathBuf, String) {
    write_config_with(dir, bootstrap, "", "", rules_extra)
}

/// Like [`write_config`], with extra lines in `[kafka]` and in `[store]`.
pub fn write_config_with(
    dir: &Path,
    bootstrap: &str,
    kafka_extra: &str,
    store_extra: &str,
    rules_extra: &str,
) -> (PathBuf, PathBuf, String) {
    let store = dir.join("store");
    let config = dir.join("mallquest.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\ngroup_id = \"mq-test\"\n{kafka_extra}\n\
             [store]\npath = \"{}\"\n{store_extra}\n[processing]\ncommit_interval_ms = 50\n\
             [http]\nlisten = \"{http}\"\n{rules_extra}",
            store.display()
        ),
    )
    .unwrap();
    (config, store, http)
}

impl Run {
    pub fn new(config: PathBuf, store: PathBuf) -> Run {
        let log = config.with_file_name("mallquest.log");
        Run {
            config,
            store,
            command: "run",
            env: Vec::new(),
            child: None,
            log,
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mallquest"))
            .args([self.command, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit status (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(within)
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, ...) to the running process. If it has
    /// exited already, fails with its exit status and its log, which say why.
    pub fn signal(&mut self, signal: &str) {
        let c = self.child.as_mut().expect("not running");
        if let Some(status) = c.try_wait().unwrap() {
            panic!(
                "mallquest exited before SIG{signal}: {status}\n{}",
                self.log()
            );
        }
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} failed\n{}", self.log());
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("not running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("mallquest did not exit within {within:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    /// The exit status of a process that was started and has exited by itself (not
    /// through [`Run::kill`], [`Run::terminate`] or [`Run::wait_exit`]).
    #[allow(dead_code)] // not every test binary uses it
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU seconds (user + system) the running process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.as_ref().expect("not running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) start after ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// Resident memory of the running process, in KiB.
    #[allow(dead_code)] // used by the soak test only
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// A KiB figure of `/proc/PID/status`, by its field name with the colon (`RssFile:`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("not running").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
    }
}
