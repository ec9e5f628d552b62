//! `run_command`: an allowlisted executable, run without a shell, with a cleared environment,
//! in a process group of its own, with a timeout and an output limit.
//!
//! Payload: `{"argv": ["echo", "hello"], "timeout_ms": 5000}` (`timeout_ms` optional, at most
//! `commands.run.max_timeout_ms`). Policy, checked before anything runs; a violation is
//! `REFUSED` with the reason:
//! * `argv[0]` must be an allowlisted program (its configured name or its resolved path);
//! * at most `max_args` arguments, each one of `args` when that list is set, each matching
//!   `arg_pattern` (the whole argument) when that is set; no NUL bytes.
//!
//! While it runs, stdout and stderr are streamed as output chunks. **Output limit:** once
//! stdout + stderr reach `max_output_bytes`, what is beyond is not sent, the process group is
//! killed and the result is `FAILED` "output limit of N bytes reached: output truncated,
//! process group killed". **Timeout:** the process group is killed (SIGKILL) and the result is
//! `FAILED` "timed out after N ms; process group killed". A cancel kills it the same way
//! (`CANCELLED`). When the program exits, whatever it left running in its process group is
//! killed too. Exit 0 → `SUCCEEDED`; another code → `FAILED` with that exit code.

use std::process::Stdio;
use std::time::Duration;

use contrail_protocol::client::commands::{CommandHandle, Outcome, OutputKind};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use super::config::{Program, RunPolicy};
use crate::stats::{CommandLimit, Stats};

/// The payload of a `run_command`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunPayload {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Timeout, ms (default `commands.run.default_timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// How long the pipes may stay open after the program exited (a grandchild that left the
/// process group may hold them).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Checks `p` against the policy: the program to run and the timeout, or why not.
pub fn check<'a>(p: &RunPayload, policy: &'a RunPolicy) -> Result<(&'a Program, Duration), String> {
    let Some(name) = p.argv.first() else {
        return Err("argv is empty".into());
    };
    let Some(program) = policy.programs.get(name) else {
        return Err(format!("{name:?} is not allowlisted"));
    };
    let args = &p.argv[1..];
    if args.len() > program.max_args {
        return Err(format!(
            "{} arguments; {name:?} allows at most {}",
            args.len(),
            program.max_args
        ));
    }
    for a in args {
        if a.contains('\0') {
            return Err("an argument contains a NUL byte".into());
        }
        if !program.args.is_empty() && !program.args.contains(a) {
            return Err(format!("argument {a:?} is not allowed for {name:?}"));
        }
        if let Some(re) = &program.pattern {
            if !re.is_match(a) {
                return Err(format!(
                    "argument {a:?} does not match the pattern for {name:?}"
                ));
            }
        }
    }
    let timeout = match p.timeout_ms {
        None => policy.default_timeout,
        Some(0) => return Err("timeout_ms must be > 0".into()),
        Some(ms) if Duration::from_millis(ms) > policy.max_timeout => {
            return Err(format!(
                "timeout_ms {ms} is above the limit of {} ms",
                policy.max_timeout.as_millis()
            ))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    Ok((program, timeout))
}

fn kill_group(pgid: Option<u32>) {
    let Some(pid) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
        return;
    };
    // ESRCH (nothing left in the group) is fine.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Kills the process group when dropped (the agent stopping aborts a running command: nothing
/// it started is left behind).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Why the run ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancelled,
    Truncated,
}

/// Runs one `run_command`.
pub async fn run(
    payload: &[u8],
    policy: &RunPolicy,
    stats: &Stats,
    handle: &mut CommandHandle,
) -> Outcome {
    let p: RunPayload = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::refused(format!(
                "payload: {e} (expected {{\"argv\": [program, args...]}})"
            ))
        }
    };
    let (program, timeout) = match check(&p, policy) {
        Ok(x) => x,
        Err(why) => return Outcome::refused(why),
    };
    let mut cmd = tokio::process::Command::new(&program.path);
    cmd.args(&p.argv[1..])
        .env_clear()
        .envs(&policy.env)
        .current_dir(&policy.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(-1, format!("cannot start {:?}: {e}", p.argv[0])),
    };
    let pgid = child.id();
    let _guard = GroupGuard(pgid);
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Outcome::failed(-1, "no pipes to the process");
    };
    let limit = policy.max_output_bytes;
    let mut sent = 0u64;
    let mut out_open = true;
    let mut err_open = true;
    let mut exit: Option<std::process::ExitStatus> = None;
    let mut stop: Option<Stop> = None;
    let mut buf_out = vec![0u8; 8 * 1024];
    let mut buf_err = vec![0u8; 8 * 1024];
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    let mut draining = false;
    loop {
        if exit.is_some() && (!(out_open || err_open) || stop.is_some()) {
            break;
        }
        let (kind, n) = tokio::select! {
            r = stdout.read(&mut buf_out), if out_open && stop.is_none() => match r {
                Ok(n) if n > 0 => (OutputKind::Stdout, n),
                _ => { out_open = false; continue; }
            },
            r = stderr.read(&mut buf_err), if err_open && stop.is_none() => match r {
                Ok(n) if n > 0 => (OutputKind::Stderr, n),
                _ => { err_open = false; continue; }
            },
            st = child.wait(), if exit.is_none() => {
                match st {
                    Ok(st) => exit = Some(st),
                    Err(e) => return Outcome::failed(-1, format!("waiting for the process: {e}")),
                }
                // Leftovers in its group go with it; the pipes then close.
                kill_group(pgid);
                if stop.is_none() {
                    draining = true;
                    timer.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                continue;
            }
            _ = &mut timer, if stop.is_none() => {
                if draining {
                    // Exited, but something outside its group holds the pipes: stop reading.
                    out_open = false;
                    err_open = false;
                } else {
                    stop = Some(Stop::Timeout);
                    kill_group(pgid);
                }
                continue;
            }
            _ = handle.cancelled(), if stop.is_none() && exit.is_none() => {
                stop = Some(Stop::Cancelled);
                kill_group(pgid);
                continue;
            }
        };
        let data = match kind {
            OutputKind::Stdout => &buf_out[..n],
            OutputKind::Stderr => &buf_err[..n],
        };
        let room = limit.saturating_sub(sent);
        let take = (data.len() as u64).min(room) as usize;
        if take > 0 {
            // Output waits for room in the library's report queue (the link may be down): the
            // timeout still holds.
            match tokio::time::timeout_at(timer.deadline(), handle.output(kind, &data[..take]))
                .await
            {
                Ok(Ok(())) => sent += take as u64,
                Ok(Err(_)) => return Outcome::failed(-1, "the agent closed while sending output"),
                Err(_) => {
                    if !draining {
                        stop = Some(Stop::Timeout);
                    }
                    out_open = false;
                    err_open = false;
                    kill_group(pgid);
                    continue;
                }
            }
        }
        if take < data.len() {
            stop = Some(Stop::Truncated);
            kill_group(pgid);
        }
    }
    match stop {
        Some(Stop::Timeout) => stats.limit_hit(CommandLimit::Timeout),
        Some(Stop::Truncated) => stats.limit_hit(CommandLimit::OutputBytes),
        _ => {}
    }
    match (stop, exit) {
        (Some(Stop::Timeout), _) => Outcome::failed(
            -1,
            format!(
                "timed out after {} ms; process group killed",
                timeout.as_millis()
            ),
        ),
        (Some(Stop::Cancelled), _) => Outcome::cancelled(),
        (Some(Stop::Truncated), _) => Outcome::failed(
            -1,
            format!(
                "output limit of {limit} bytes reached: output truncated, process group killed"
            ),
        ),
        (None, Some(st)) => match st.code() {
            Some(0) => Outcome::succeeded(0),
            Some(c) => Outcome::failed(c, format!("exited with status {c}")),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Outcome::failed(
                    -1,
                    format!("killed by signal {}", st.signal().unwrap_or_default()),
                )
            }
        },
        (None, None) => Outcome::failed(-1, "the process ended without an exit status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::config::CommandsConfig;

    fn policy(toml: &str) -> RunPolicy {
        let c: CommandsConfig = toml::from_str(toml).expect("parses");
        c.validate(
            std::path::Path::new("/tmp"),
            std::path::Path::new("/ca.pem"),
            254,
            "/usr/bin:/bin",
        )
        .expect("validates")
        .expect("enabled")
        .run
    }

    fn payload(argv: &[&str]) -> RunPayload {
        RunPayload {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: None,
        }
    }

    #[test]
    fn the_policy_refuses_what_is_not_allowed_and_says_why() {
        let p = policy(
            "enabled = true\n[run]\nmax_timeout_ms = 20000\n\
             [[run.allow]]\nprogram = \"echo\"\nmax_args = 2\narg_pattern = \"[a-z]+\"\n\
             [[run.allow]]\nprogram = \"/bin/df\"\nargs = [\"-h\"]\n",
        );
        assert!(check(&payload(&["echo", "hello"]), &p).is_ok());
        // The resolved path is allowed too.
        let path = p.programs["echo"].path.display().to_string();
        assert!(check(&payload(&[&path, "hi"]), &p).is_ok());
        let err = |argv: &[&str]| check(&payload(argv), &p).expect_err("refused");
        assert!(err(&["rm", "-rf", "/"]).contains("not allowlisted"));
        assert!(err(&[]).contains("empty"));
        assert!(err(&["echo", "a", "b", "c"]).contains("at most 2"));
        assert!(err(&["echo", "Hello"]).contains("does not match"));
        assert!(err(&["echo", "a;b"]).contains("does not match"));
        assert!(err(&["/bin/df", "-i"]).contains("not allowed"));
        assert!(check(&payload(&["/bin/df", "-h"]), &p).is_ok());
        let mut long = payload(&["echo", "x"]);
        long.timeout_ms = Some(60_000);
        assert!(check(&long, &p).expect_err("too long").contains("above"));
    }

    #[test]
    fn a_program_missing_from_path_fails_validation() {
        let c: CommandsConfig = toml::from_str(
            "enabled = true\n[[run.allow]]\nprogram = \"no-such-program-contrail\"\n",
        )
        .expect("parses");
        let e = c
            .validate(
                std::path::Path::new("/tmp"),
                std::path::Path::new("/ca.pem"),
                254,
                "/usr/bin:/bin",
            )
            .expect_err("unknown program");
        assert!(
            e.to_string().starts_with("commands.run.allow.program"),
            "{e}"
        );
    }
}
