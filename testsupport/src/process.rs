//! A child process that is killed when dropped, with `SIGTERM` / `SIGKILL` helpers.

use std::io;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::poll::POLL_INTERVAL;

/// Owns a child process and kills it (`SIGKILL`, then reaps it) when dropped.
///
/// Use it for any process a test spawns, e.g. a release build of the relay that a test wants to
/// `kill -9` ([`ProcessGuard::kill_hard`]) or stop gracefully ([`ProcessGuard::terminate`]).
#[derive(Debug)]
pub struct ProcessGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Spawns `cmd` (stdin set to null; stdout/stderr as configured on `cmd`).
    ///
    /// `name` is used in panic and log messages.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
        Ok(Self::from_child(name, child))
    }

    /// Wraps an already spawned child.
    pub fn from_child(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            status: None,
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Mutable access to the underlying [`Child`] (e.g. to take its stdout pipe).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `SIGKILL` and waits for the process to exit. Does nothing if it already exited.
    pub fn kill_hard(&mut self) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.status;
        }
        if let Err(e) = self.child.kill() {
            tracing::warn!(name = %self.name, error = %e, "failed to SIGKILL child");
        }
        match self.child.wait() {
            Ok(status) => self.status = Some(status),
            Err(e) => tracing::warn!(name = %self.name, error = %e, "failed to reap child"),
        }
        self.status
    }

    /// Sends `SIGTERM` (via `/bin/kill -TERM <pid>`, the workspace forbids `unsafe`) and returns
    /// without waiting; follow with [`ProcessGuard::wait_exit`]. Does nothing if already exited.
    pub fn terminate(&mut self) -> io::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let status = Command::new("/bin/kill")
            .args(["-TERM", &self.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "/bin/kill -TERM {} failed: {status}",
                self.id()
            )))
        }
    }

    /// Polls for the process to exit for up to `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            match self.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(name = %self.name, error = %e, "try_wait failed");
                    return None;
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL.min(Duration::from_millis(5)));
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn sleeper() -> ProcessGuard {
        ProcessGuard::spawn("sleep", Command::new("sleep").arg("60")).expect("spawn sleep")
    }

    fn pid_alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn wait_exit_times_out_while_running() {
        let mut p = sleeper();
        assert!(p.wait_exit(Duration::from_millis(50)).is_none());
        assert!(p.is_running());
    }

    #[test]
    fn terminate_sends_sigterm() {
        let mut p = sleeper();
        p.terminate().expect("terminate");
        let status = p.wait_exit(Duration::from_secs(5)).expect("exited");
        assert_eq!(status.signal(), Some(libc_sig::TERM));
        assert!(!p.is_running());
        p.terminate().expect("terminate after exit is a no-op");
    }

    #[test]
    fn kill_hard_sends_sigkill() {
        let mut p = sleeper();
        let status = p.kill_hard().expect("exited");
        assert_eq!(status.signal(), Some(libc_sig::KILL));
    }

    #[test]
    fn natural_exit_is_reported() {
        let mut p = ProcessGuard::spawn("true", &mut Command::new("true")).expect("spawn");
        let status = p.wait_exit(Duration::from_secs(5)).expect("exited");
        assert!(status.success());
    }

    #[test]
    fn drop_kills_and_reaps() {
        let p = sleeper();
        let pid = p.id();
        assert!(pid_alive(pid));
        drop(p);
        assert!(!pid_alive(pid), "process {pid} still present after drop");
    }

    /// Signal numbers on Linux (avoids a libc dependency just for two constants).
    mod libc_sig {
        pub const TERM: i32 = 15;
        pub const KILL: i32 = 9;
    }
}
