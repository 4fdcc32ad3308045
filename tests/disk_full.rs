//! Disk full while writing the store: the store lives on a small tmpfs that fills up
//! mid-stream.
//! - With the guard (`[store] min_free_mb`), `mallquest run` pauses before a write can
//!   fail, says why (log, `/readyz`, metrics), waits without spinning, and resumes by
//!   itself once the tmpfs is grown.
//! - Without it, the write fails with ENOSPC, fjall refuses writes from then on, and
//!   `run` exits non-zero saying why; restarted once there is space (as a supervisor
//!   would), it recovers from the store's journal.
//!
//! Either way the end state is exactly the reference fold: nothing lost, nothing doubled.
//!
//! Needs root, to mount the tmpfs: `scripts/test.sh` runs it when it can mount one
//! (`--ignored`), and says so when it cannot.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::broker::Broker;
use support::processor::{write_config_with, Run};
use support::streams::{last_per_key, reference_of, take};

/// Runs `mount ARGS... AT`, failing the test with mount's own message.
fn mount(args: &[&str], at: &Path) {
    let out = Command::new("mount").args(args).arg(at).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} failed (run as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_tmpfs(at: &Path, size: &str) {
    std::fs::create_dir_all(at).unwrap();
    mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], at);
}

fn resize_tmpfs(at: &Path, size: &str) {
    mount(&["-o", &format!("remount,size={size}")], at);
}

/// Unmounts the tmpfs when the case ends, also on a failed assertion.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Case {
    broker: Broker,
    receipts: Vec<support::broker::Read>,
    expected: support::reference::Expected,
    run: Run,
    http: String,
    mnt: std::path::PathBuf,
    store: std::path::PathBuf,
    _unmount: Unmount,
    _dir: tempfile::TempDir,
}

impl Case {
    /// A stream of 40,000 receipts and `run` started on a store on a `size` tmpfs.
    fn start(size: &str, min_free_mb: u64) -> Case {
        let broker = Broker::start();
        broker.create_topic("receipts", 2, false);
        let mut sim =
            mallquest::sim::Simulator::new(31, 20_000, 40, mallquest::sim::Mix::default());
        broker.produce("receipts", &take(&mut sim, 40_000));
        let receipts = broker.read_all("receipts");
        assert_eq!(receipts.len(), 40_000);
        let expected = reference_of(&receipts);

        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("disk");
        mount_tmpfs(&mnt, size);
        let (config, _, http) = write_config_with(dir.path(), &broker.bootstrap(), "", "", "");
        let store = mnt.join("store");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("path = \"{}\"", dir.path().join("store").display()),
            &format!(
                "path = \"{}\"\nmin_free_mb = {min_free_mb}",
                store.display()
            ),
        );
        assert!(text.contains("min_free_mb"));
        std::fs::write(&config, text).unwrap();
        let mut run = Run::new(config, store.clone());
        run.start();
        Case {
            broker,
            receipts,
            expected,
            run,
            http,
            _unmount: Unmount(mnt.clone()),
            mnt,
            store,
            _dir: dir,
        }
    }

    fn wait_for_log(&mut self, text: &str, may_exit: bool) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !self.run.log().contains(text) {
            assert!(
                may_exit || self.run.is_running(),
                "exited\n{}",
                self.run.log()
            );
            assert!(
                Instant::now() < deadline,
                "never logged {text:?}\n{}",
                self.run.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the topic and `/readyz` show the whole stream folded, stops `run`, and
    /// checks the store against the reference.
    fn finish_exact(mut self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = support::http::get(&self.http, "/readyz")
                .map(|r| r.status)
                .ok();
            let projections = last_per_key(&self.broker.read_all("user-projections"));
            if ready == Some(200) && projections == self.expected.projections {
                break;
            }
            assert!(self.run.is_running(), "exited\n{}", self.run.log());
            assert!(
                Instant::now() < deadline,
                "did not catch up\n{}",
                self.run.log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let status = self.run.terminate(Duration::from_secs(30));
        assert!(status.success(), "exit {status:?}\n{}", self.run.log());
        let store = mallquest::store::Store::open(&self.store).unwrap();
        let stored: std::collections::BTreeMap<String, serde_json::Value> = store
            .users()
            .map(|u| {
                let u = u.unwrap();
                (
                    u.user_id.clone(),
                    serde_json::from_slice(&mallquest::codec::encode_projection(&u)).unwrap(),
                )
            })
            .collect();
        assert_eq!(stored, self.expected.projections);
        for p in 0..2 {
            let n = self.receipts.iter().filter(|r| r.partition == p).count() as i64;
            assert_eq!(store.offset("receipts", p).unwrap(), Some(n));
        }
    }
}

#[test]
#[ignore = "needs root to mount a tmpfs; scripts/test.sh runs it when it can"]
fn low_disk_pauses_folding_reports_why_and_resumes_exactly() {
    let mut case = Case::start("10m", 4);
    case.wait_for_log("disk low:", false);
    let ready = support::http::get(&case.http, "/readyz").unwrap();
    let why = String::from_utf8_lossy(&ready.body).to_string();
    assert_eq!(ready.status, 503, "{why}");
    assert!(why.contains("disk low"), "{why}");
    let metrics = support::http::get(&case.http, "/metrics").unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains("mallquest_commit_failures_total{stage=\"disk\"}"),
        "{metrics}"
    );
    assert!(
        !case.run.log().contains("No space left"),
        "a write failed despite the guard\n{}",
        case.run.log()
    );
    // Paused, not spinning.
    let cpu = case.run.cpu_seconds();
    std::thread::sleep(Duration::from_secs(10));
    let spent = case.run.cpu_seconds() - cpu;
    assert!(case.run.is_running(), "exited\n{}", case.run.log());
    assert!(spent < 1.0, "{spent:.2} CPU-seconds in 10 s paused");
    eprintln!("paused for disk space: {spent:.2} CPU-seconds in 10 s");

    resize_tmpfs(&case.mnt, "512m");
    case.wait_for_log("Disk space is back", false);
    case.finish_exact();
}

#[test]
#[ignore = "needs root to mount a tmpfs; scripts/test.sh runs it when it can"]
fn a_failed_write_on_a_full_disk_exits_clearly_and_a_restart_recovers_exactly() {
    let mut case = Case::start("6m", 0);
    case.wait_for_log("cannot be written any more", true);
    let status = case.run.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "exited 0 on a failed write");
    resize_tmpfs(&case.mnt, "512m");
    case.run.start();
    case.finish_exact();
}
