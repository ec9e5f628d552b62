#!/usr/bin/env python3
"""Turns contrail-loadgen JSON reports into Markdown tables of medians.

usage: summarize.py scenarios|compare RAW_DIR MACHINE_LINE SINK
"""
import glob
import json
import os
import re
import statistics
import sys


def load(raw):
    runs = {}
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        name = re.sub(r"-\d+\.json$", "", os.path.basename(path))
        with open(path) as f:
            runs.setdefault(name, []).append(json.load(f))
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r


def fmt_rate(v):
    if v is None:
        return "n/a"
    return f"{v / 1e6:.3f}M/s" if v >= 1e6 else f"{v / 1e3:.1f}k/s"


def fmt_ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f}"


def fmt(v, spec="{:.1f}"):
    return "n/a" if v is None else spec.format(v)


def metrics(rs):
    m = {
        "runs": len(rs),
        "sent": med([get(r, "throughput", "sent_per_s") for r in rs]),
        "acked": med([get(r, "throughput", "acked_per_s") for r in rs]),
        "delivered": med([get(r, "throughput", "delivered_per_s") for r in rs]),
        "ack_p50": med([get(r, "ack_latency", "p50_us") for r in rs]),
        "ack_p99": med([get(r, "ack_latency", "p99_us") for r in rs]),
        "ack_p999": med([get(r, "ack_latency", "p999_us") for r in rs]),
        "e2e_p50": med([get(r, "e2e_latency", "p50_us") for r in rs]),
        "e2e_p99": med([get(r, "e2e_latency", "p99_us") for r in rs]),
        "e2e_p999": med([get(r, "e2e_latency", "p999_us") for r in rs]),
        "lost": max([get(r, "totals", "lost") or 0 for r in rs], default=0),
        "dups": max([get(r, "totals", "duplicates") or 0 for r in rs], default=0),
        "conn_rate": med([get(r, "connect", "per_s") for r in rs]),
        "conn_cpu": med([get(r, "connect", "relay_cpu_us_per_connect") for r in rs]),
        "conn_cpu_lg": med([get(r, "connect", "loadgen_cpu_us_per_connect") for r in rs]),
        "rss_sess": med([get(r, "relay", "rss_per_session_kib") for r in rs]),
        "cpu_frame": med([get(r, "relay", "cpu_ns_per_frame") for r in rs]),
        "cpu_cores": med([get(r, "relay", "cpu_cores") for r in rs]),
        "lg_cores": med([r.get("loadgen_cpu_cores") for r in rs]),
        "dgrams": med([r.get("udp_datagrams_per_frame") for r in rs]),
        "send_lag_p99": med([get(r, "e2e_split", "send_lag", "p99_us") for r in rs]),
        "handoff_p99": med([get(r, "e2e_split", "handoff_to_subscriber", "p99_us") for r in rs]),
        "to_relay_p99": med([get(r, "e2e_split", "to_relay", "p99_us") for r in rs]),
        "relay_side_p99": med([get(r, "e2e_split", "relay_to_subscriber", "p99_us") for r in rs]),
        "relay_side_p999": med([get(r, "e2e_split", "relay_to_subscriber", "p999_us") for r in rs]),
        "e2e_p99_runs": [get(r, "e2e_latency", "p99_us") for r in rs],
        "cpu_frame_runs": [get(r, "relay", "cpu_ns_per_frame") for r in rs],
        "rcvbuf_runs": [r.get("udp_rcvbuf_errors") for r in rs],
        "ok": sum(1 for r in rs if get(r, "verdict", "ok")),
        "cmd": rs[0].get("command", ""),
        "e2e_note": rs[0].get("e2e_note"),
    }
    m["delivered_or_acked"] = m["delivered"] if m["delivered"] is not None else m["acked"]
    return m


def scenarios(raw, machine, sink):
    runs = load(raw)
    out = [f"# Scenario results ({machine})", "",
           f"Relay sink: `{sink}`. Medians of the runs shown; the machine has 2 cores shared by "
           "relay, loadgen and subscriber (and other engineers' compiles): figures are noisy.", "",
           "| scenario | runs (pass) | sent/s | acked/s | delivered/s | ack p50/p99/p99.9 ms | "
           "e2e p50/p99/p99.9 ms | lost | dups | connects/s | CPU µs/connect relay/loadgen | RSS KiB/session | relay ns/frame | relay cores | "
           "loadgen cores | UDP datagrams/frame |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cmds = []
    for name, rs in runs.items():
        m = metrics(rs)
        out.append(
            f"| {name} | {m['runs']} ({m['ok']}) | {fmt_rate(m['sent'])} | {fmt_rate(m['acked'])} | "
            f"{fmt_rate(m['delivered'])} | {fmt_ms(m['ack_p50'])}/{fmt_ms(m['ack_p99'])}/{fmt_ms(m['ack_p999'])} | "
            f"{fmt_ms(m['e2e_p50'])}/{fmt_ms(m['e2e_p99'])}/{fmt_ms(m['e2e_p999'])} | {m['lost']} | {m['dups']} | "
            f"{fmt(m['conn_rate'], '{:.0f}')} | {fmt(m['conn_cpu'], '{:.0f}')}/{fmt(m['conn_cpu_lg'], '{:.0f}')} | "
            f"{fmt(m['rss_sess'], '{:.1f}')} | {fmt(m['cpu_frame'], '{:.0f}')} | "
            f"{fmt(m['cpu_cores'], '{:.2f}')} | {fmt(m['lg_cores'], '{:.2f}')} | {fmt(m['dgrams'], '{:.2f}')} |")
        cmds.append(f"- {name}: `{m['cmd']}`" + (f" (e2e: {m['e2e_note']})" if m["e2e_note"] else ""))
    out += ["", "UDP datagrams/frame: datagrams the kernel delivered to sockets on the machine over the "
            "window per frame acked (`/proc/net/snmp`); a GSO batch that loopback delivers whole to a "
            "GRO socket counts once.", "", "Commands (first run of each):", ""] + cmds
    return "\n".join(out)


def runs_ms(values):
    return ", ".join("n/a" if v is None else f"{v / 1000:.1f}" for v in values)


def ratio(a, b):
    return "n/a" if a is None or not b else f"{a / b:.2f}×"


def compare(raw, machine, sink):
    runs = load(raw)
    by = {}
    for name, rs in runs.items():
        workload, target = name.split("-", 1)
        by.setdefault(workload, {})[target] = metrics(rs)
    out = [f"# Contrail vs Mosquitto vs NATS ({machine})", "",
           "Same harness (contrail-loadgen), publishers, payload, rate, duration and credit window "
           "(1024 outstanding per publisher); open-loop schedule, latency from the intended send time, "
           f"subscriber on a thread of its own. Contrail relay sink: `{sink}`. Medians; ratios are "
           "against NATS with TLS in the same run (lower is better). `send lag`: intended send time → "
           "handed to the client library (the load generator's own lateness); `handed→sub`: from there "
           "to the subscriber; `relay-side`: the relay's receive stamp → subscriber (Contrail only: the "
           "brokers stamp nothing). Server µs/msg: the server's CPU over the window per message "
           "(Contrail: per frame acked). RcvbufErrors: the kernel's UDP receive-buffer overflows over "
           "the measured window, per run.", ""]
    for workload, targets in by.items():
        base = targets.get("nats-tls", {})
        out += [f"## {workload}", "",
                "| target | runs (pass) | delivered/s | e2e p50 ms | e2e p99 ms (runs) | p99 vs NATS TLS | e2e p99.9 ms | "
                "send lag p99 | handed→sub p99 | relay-side p99 | server cores | server µs/msg | CPU/msg vs NATS TLS | "
                "loadgen cores | lost | dups | RcvbufErrors |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for target, m in targets.items():
            cpu_us = None if m["cpu_frame"] is None else m["cpu_frame"] / 1000
            base_cpu = None if base.get("cpu_frame") is None else base["cpu_frame"] / 1000
            out.append(
                f"| {target} | {m['runs']} ({m['ok']}) | {fmt_rate(m['delivered_or_acked'])} | {fmt_ms(m['e2e_p50'])} | "
                f"{fmt_ms(m['e2e_p99'])} ({runs_ms(m['e2e_p99_runs'])}) | {ratio(m['e2e_p99'], base.get('e2e_p99'))} | "
                f"{fmt_ms(m['e2e_p999'])} | {fmt_ms(m['send_lag_p99'])} | {fmt_ms(m['handoff_p99'])} | "
                f"{fmt_ms(m['relay_side_p99'])} | {fmt(m['cpu_cores'], '{:.2f}')} | {fmt(cpu_us, '{:.1f}')} | "
                f"{ratio(cpu_us, base_cpu)} | {fmt(m['lg_cores'], '{:.2f}')} | {m['lost']} | {m['dups']} | "
                f"{', '.join(str(v) for v in m['rcvbuf_runs'])} |")
        c = targets.get("contrail")
        if c and base and workload.startswith("fleet"):
            c_cpu = None if c["cpu_frame"] is None else c["cpu_frame"] / 1000
            b_cpu = None if base["cpu_frame"] is None else base["cpu_frame"] / 1000
            out += ["", "Issue 23's goals, Contrail against NATS with TLS in this run (medians):", "",
                    f"- relay CPU per frame / NATS TLS server CPU per message: {ratio(c_cpu, b_cpu)} (goal ≤ 0.6×)",
                    f"- relay-side p99 / NATS TLS e2e p99: {ratio(c['relay_side_p99'], base['e2e_p99'])} (goal ≤ 1×)",
                    f"- e2e p99 / NATS TLS e2e p99: {ratio(c['e2e_p99'], base['e2e_p99'])} (goal ≤ 1×)"]
            if "@" in workload:
                out.append(f"- Contrail e2e p99 {fmt_ms(c['e2e_p99'])} ms (goal ≤ 5), p99.9 {fmt_ms(c['e2e_p999'])} ms "
                           f"(goal ≤ 10); relay-side p99 {fmt_ms(c['relay_side_p99'])}, p99.9 {fmt_ms(c['relay_side_p999'])} ms")
        out += ["", "Commands:", ""] + [f"- {t}: `{m['cmd']}`" for t, m in targets.items()] + [""]
    return "\n".join(out)


def main():
    mode, raw, machine, sink = sys.argv[1:5]
    print(scenarios(raw, machine, sink) if mode == "scenarios" else compare(raw, machine, sink))


if __name__ == "__main__":
    main()
