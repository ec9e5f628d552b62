//! Process CPU use from `/proc/self/stat` (Linux; elsewhere it reads 0).

use std::time::Instant;

/// Measures the process's CPU time between calls.
#[derive(Debug)]
pub struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// CPU seconds (user + system) the process has used, if readable.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux we run on.
    Some((utime + stime) / 100.0)
}

impl CpuMeter {
    /// A meter whose first sample reads 0.
    pub fn new() -> Self {
        CpuMeter { last: None }
    }

    /// Percent of one core used since the previous call (0 on the first).
    pub fn sample(&mut self, now: Instant) -> f64 {
        let Some(cpu) = process_cpu_secs() else {
            return 0.0;
        };
        let pct = match self.last {
            Some((t, c)) => {
                let wall = now.saturating_duration_since(t).as_secs_f64();
                if wall > 0.0 {
                    ((cpu - c) / wall * 100.0).max(0.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let before = process_cpu_secs().expect("linux /proc");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_secs().expect("linux /proc") >= before);
    }
}
