//! Reading a local relay's memory and CPU time from `/proc` (Linux).

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time of `pid` (all threads), in nanoseconds.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    // USER_HZ is 100 on every Linux ABI we run on.
    Some(ticks * 10_000_000)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the `(comm)`, which may contain spaces: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// UDP datagrams the kernel delivered to sockets on this machine since boot (`InDatagrams` of
/// `/proc/net/snmp` plus `/proc/net/snmp6`'s `Udp6InDatagrams`). On loopback every datagram
/// sent is received once, so a difference over a window counts the window's datagrams of
/// every process on the machine.
pub fn udp_in_datagrams() -> Option<u64> {
    let v4 = parse_snmp_udp_in(&std::fs::read_to_string("/proc/net/snmp").ok()?)?;
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .ok()
        .and_then(|s| parse_snmp6_udp_in(&s))
        .unwrap_or(0);
    Some(v4 + v6)
}

/// UDP receive-buffer overflows on this machine since boot (`RcvbufErrors` of `/proc/net/snmp`
/// plus `Udp6RcvbufErrors` of `/proc/net/snmp6`): datagrams the kernel dropped because a
/// socket's receive buffer was full (each one a QUIC loss for Contrail).
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let v4 = parse_snmp_udp(
        &std::fs::read_to_string("/proc/net/snmp").ok()?,
        "RcvbufErrors",
    )?;
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Some(v4 + v6)
}

fn parse_snmp_udp_in(snmp: &str) -> Option<u64> {
    parse_snmp_udp(snmp, "InDatagrams")
}

fn parse_snmp_udp(snmp: &str, field: &str) -> Option<u64> {
    // Two `Udp:` lines: the field names, then the values.
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn parse_snmp6_udp_in(snmp6: &str) -> Option<u64> {
    snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InDatagrams"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tcontrail-relay\nVmPeak:\t 9000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_vmrss(status), Some(12345));
        let stat = "42 (contrail relay) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_udp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams\nUdp: 1234 5 0 1300\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_snmp_udp_in(snmp), Some(1234));
        let with_errors =
            "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 1 2 3 4 99\n";
        assert_eq!(parse_snmp_udp(with_errors, "RcvbufErrors"), Some(99));
        assert_eq!(parse_snmp_udp(snmp, "RcvbufErrors"), None);
        let snmp6 = "Udp6InDatagrams                 \t77\nUdp6NoPorts 0\n";
        assert_eq!(parse_snmp6_udp_in(snmp6), Some(77));
        assert_eq!(parse_snmp_udp_in("Ip: x\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_ns(me).is_some());
    }
}
