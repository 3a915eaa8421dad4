//! Child processes and what /proc says about processes: a guard that kills
//! its child when dropped (also while unwinding from a panic), the sibling
//! binaries of this one, CPU time and resident memory.
//!
//! Linux only (it reads /proc); it never signals a process it did not start.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A child process, killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `command` with a piped stdin (children started with
    /// `--exit-with-stdin` also stop if this process dies without unwinding).
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name} ({command:?})"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether the child has exited (then with which status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the child to exit on its own, at most `within`.
    pub fn wait_for_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Reads the first line a child prints on stdout, waiting at most `within`.
pub fn first_line(stdout: ChildStdout, within: Duration) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
        // Keep draining so that the child never blocks on a full pipe.
        let mut sink = String::new();
        while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
    });
    match rx.recv_timeout(within) {
        Ok(Ok(line)) if !line.trim().is_empty() => Ok(line),
        Ok(Ok(_)) => bail!("the child closed its stdout without a line"),
        Ok(Err(e)) => Err(e).context("read the child's stdout"),
        Err(_) => bail!("no line from the child within {within:?}"),
    }
}

/// A binary beside this one (cargo puts every binary of the workspace in
/// the same target directory), unless `explicit` names one.
pub fn sibling_binary(name: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let me = std::env::current_exe().context("locate this binary")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first: cargo build --release --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}

/// Clock ticks per second of /proc/*/stat times (USER_HZ; 100 on Linux
/// everywhere that matters).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time a process has used, from /proc/PID/stat
/// (`self` for this process). 10 ms resolution.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: indices 11 and 12 after the state.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Ok(Duration::from_secs_f64(
        (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND,
    ))
}

/// Resident and peak resident memory in bytes (VmRSS, VmHWM).
pub fn memory(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((kb("VmRSS:"), kb("VmHWM:")))
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
