#!/usr/bin/env python3
"""Config-agreement checks for Contrail's deployment assets (run by deploy/validate.sh in CI).

Nothing under deploy/ can run on the CI machine (no Docker engine, no cluster, no cloud), so this
script checks, by parsing, that the assets agree with the relay's real configuration:

* every CONTRAIL_*, REDIS_* and RELAY_ID environment variable any asset sets is one the relay reads
  (the ENV_VARS array in relay/src/config.rs; CONTRACTS.md's list as a fallback, with a warning);
* ports are the contract's 4433/udp (QUIC) and 2112/tcp (HTTP) everywhere;
* probes and health checks hit real endpoints (/healthz, /readyz);
* every relay TOML file (including the Terraform template) parses and uses only known keys;
* Prometheus rules and the Grafana dashboard only use metric names from CONTRACTS.md;
* the Terraform parses (python-hcl2) and keeps its secure defaults;
* drain deadlines fit inside the termination grace periods / stop timeouts.

Exit status 0 when everything agrees, 1 otherwise. Warnings (things other engineers still have to
land, such as ENV_VARS in config.rs or the contrail-tail binary) do not fail the run unless
--strict is given.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable

import yaml

try:
    import hcl2  # python-hcl2
except ImportError:  # validate.sh installs it; keep the error explicit when run by hand
    hcl2 = None

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

QUIC_PORT = 4433
HTTP_PORT = 2112
RELAY_UID = 10001
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
# Seconds a stopping relay needs beyond drain.deadline_ms (sink flush, routing cleanup, exit).
DRAIN_MARGIN_MS = 5000

# The relay's config file shape (deny_unknown_fields). Keep in sync with relay/src/config.rs.
TOP_KEYS = {"relay_id", "listen", "tls", "limits", "http", "drain", "redis", "auth", "sinks"}
SECTION_KEYS = {
    "tls": {"cert", "key"},
    "limits": {"max_sessions", "max_inflight", "max_frame_bytes", "handshake_timeout_ms",
               "idle_timeout_ms", "heartbeat_interval_ms"},
    "http": {"listen", "admin_token"},
    "drain": {"deadline_ms", "reconnect_after_ms"},
    "redis": {"addr", "ttl_secs"},
    "auth": {"mode"},
}
SINK_KEYS = {"name", "type", "required", "url", "subject"}
SINK_TYPES = {"stdout", "file", "redis_streams", "nats_jetstream", "live"}
AUTH_MODES = {"none", "token", "jwt"}
ENV_PREFIXES = ("CONTRAIL_", "REDIS_")
# Filled by load_source_schema(): what relay/src/config.rs really accepts (None: not parsable).
SOURCE_SCHEMA: dict[str, Any] | None = None
ENV_EXACT = {"RELAY_ID"}


class Report:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.passed = 0
        self.failed: list[str] = []
        self.warnings: list[str] = []
        self.section = ""

    def begin(self, name: str) -> None:
        self.section = name
        print(f"== {name}")

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        if ok:
            self.passed += 1
            return True
        msg = f"[{self.section}] {what}" + (f": {why}" if why else "")
        self.failed.append(msg)
        print(f"  FAIL {what}" + (f": {why}" if why else ""))
        return False

    def warn(self, what: str) -> None:
        msg = f"[{self.section}] {what}"
        self.warnings.append(msg)
        print(f"  WARN {what}")


R: Report


# ----------------------------------------------------------------------------- contract sources

def load_env_vars() -> tuple[set[str], str]:
    config_rs = ROOT / "relay" / "src" / "config.rs"
    candidates = [config_rs] + sorted((ROOT / "relay" / "src" / "config").glob("*.rs"))
    for path in candidates:
        if not path.is_file():
            continue
        m = re.search(r"ENV_VARS\s*:\s*&\[\s*&(?:'static\s+)?str\s*\]\s*=\s*&\[(.*?)\]\s*;",
                      path.read_text(), re.S)
        if m:
            names = set(re.findall(r'"([A-Z][A-Z0-9_]*)"', m.group(1)))
            if names:
                return names, str(path.relative_to(ROOT))
    R.warn("relay/src/config.rs has no `pub const ENV_VARS: &[&str]` yet; "
           "falling back to the list in CONTRACTS.md")
    text = (ROOT / "CONTRACTS.md").read_text()
    m = re.search(r"## Environment variables.*?\n(.*?)(?:\n## |\Z)", text, re.S)
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]{2,})\b", m.group(1) if m else ""))
    names = {n for n in names if n.startswith(ENV_PREFIXES) or n in ENV_EXACT}
    return names, "CONTRACTS.md"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def load_source_schema() -> dict[str, Any] | None:
    """The keys relay/src/config.rs accepts, read from its serde structs (deny_unknown_fields).

    Returns {"top": set, "sections": {name: set}, "sink": set, "sink_types": set | None} or None
    when the file or its Config struct is missing."""
    path = ROOT / "relay" / "src" / "config.rs"
    if not path.is_file():
        return None
    src = path.read_text()
    # Each sink type's own keys live in its folder (relay/src/sink/<kind>/config.rs).
    sink_src = "".join(p.read_text() for p in sorted((ROOT / "relay" / "src" / "sink").glob("*/config.rs")))
    structs: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", src + "\n" + sink_src, re.S):
        fields: dict[str, str] = {}
        attrs: list[str] = []
        for line in m.group(2).splitlines():
            line = line.strip()
            if line.startswith("#["):
                attrs.append(line)
                continue
            f = re.match(r"pub (\w+)\s*:\s*(.+?),?$", line)
            if f:
                joined = " ".join(attrs)
                attrs = []
                if re.search(r"serde\([^)]*\bskip\b", joined):
                    continue
                r = re.search(r'rename\s*=\s*"([^"]+)"', joined)
                fields[r.group(1) if r else f.group(1)] = f.group(2)
            elif line and not line.startswith("//"):
                attrs = []
        structs[m.group(1)] = fields
    if "Config" not in structs:
        return None

    def inner(ty: str) -> str:
        m = re.match(r"(?:Option|Vec)<(\w+)>$", ty)
        return m.group(1) if m else ty

    top = structs["Config"]
    schema: dict[str, Any] = {"top": set(top), "sections": {}, "sink": set(), "sink_types": None}
    for key, ty in top.items():
        t = inner(ty)
        if key == "sinks":
            schema["sink"] = set(structs.get(t, {}))
        elif t in structs:
            schema["sections"][key] = set(structs[t])
    schema["sink_by_type"] = {}
    km = re.search(r"(#\[serde\([^\]]*\)\]\s*)?pub enum SinkKind\s*\{(.*?)\n\}", src, re.S)
    if km:
        # `#[serde(tag = "type")]`: the common keys of SinkConfig plus `type`, then the variant's struct.
        schema["sink"] = (schema["sink"] - {"kind"}) | {"type"}
        for variant, ty in re.findall(r"^\s*(\w+)\((\w+)\)\s*,?\s*$", km.group(2), re.M):
            schema["sink_by_type"][snake(variant)] = set(structs.get(ty, {}))
        schema["sink_types"] = set(schema["sink_by_type"])
    em = re.search(r"(#\[serde\([^\]]*\)\]\s*)?pub enum SinkType\s*\{(.*?)\n\}", src, re.S)
    if em and not km:
        rename_all = "snake_case" in (em.group(1) or "") or "lowercase" in (em.group(1) or "")
        variants = re.findall(r"^\s*(\w+)\s*,?\s*$", em.group(2), re.M)
        schema["sink_types"] = {snake(v) if rename_all else v for v in variants}
    return schema


def load_metric_names() -> set[str]:
    text = (ROOT / "CONTRACTS.md").read_text()
    m = re.search(r"## Metric names.*?\n(.*?)(?:\n## |\Z)", text, re.S)
    names = set(re.findall(r"\b(contrail_[a-z0-9_]+)", m.group(1) if m else ""))
    histograms = {"contrail_frame_age_seconds", "contrail_ack_latency_seconds",
                  "contrail_commit_latency_seconds", "contrail_sink_write_latency_seconds"}
    for s in histograms & names:
        names |= {s + "_bucket", s + "_sum", s + "_count"}
    return names


def load_endpoints() -> set[str]:
    text = (ROOT / "CONTRACTS.md").read_text()
    return {p.split("?")[0] for p in re.findall(r"`(?:GET |POST )?(/[a-z0-9_/{}.?=&-]*)`", text)}


# ----------------------------------------------------------------------------- helpers

def env_allowed(name: str) -> bool:
    return name.startswith(ENV_PREFIXES) or name in ENV_EXACT


def check_env_names(names: Iterable[str], env_vars: set[str], where: str) -> None:
    for name in names:
        if env_allowed(name):
            R.check(name in env_vars, f"{where}: env var {name}",
                    "not read by the relay (not in ENV_VARS)")


def port_of(addr: str) -> int | None:
    m = re.search(r":(\d+)$", str(addr))
    return int(m.group(1)) if m else None


_TOML_SEEN: dict[str, dict[str, Any] | None] = {}


def check_relay_toml(cfg_text: str, label: str) -> dict[str, Any] | None:
    """Checks one relay config file (once per distinct content) and returns it parsed."""
    if cfg_text in _TOML_SEEN:
        return _TOML_SEEN[cfg_text]
    _TOML_SEEN[cfg_text] = cfg = _check_relay_toml(cfg_text, label)
    return cfg


def _check_relay_toml(cfg_text: str, label: str) -> dict[str, Any] | None:
    try:
        cfg = tomllib.loads(cfg_text)
    except tomllib.TOMLDecodeError as e:
        R.check(False, f"{label} parses as TOML", str(e))
        return None
    R.check(True, f"{label} parses")
    unknown = set(cfg) - TOP_KEYS
    R.check(not unknown, f"{label}: top-level keys", f"unknown {sorted(unknown)}")
    for sec, allowed in SECTION_KEYS.items():
        if sec in cfg:
            if not R.check(isinstance(cfg[sec], dict), f"{label}: [{sec}] is a table"):
                continue
            unknown = set(cfg[sec]) - allowed
            R.check(not unknown, f"{label}: [{sec}] keys", f"unknown {sorted(unknown)}")
    if "listen" in cfg:
        R.check(port_of(cfg["listen"]) == QUIC_PORT, f"{label}: listen port",
                f"{cfg['listen']} is not :{QUIC_PORT}")
    if "http" in cfg and "listen" in cfg["http"]:
        R.check(port_of(cfg["http"]["listen"]) == HTTP_PORT, f"{label}: http.listen port",
                f"{cfg['http']['listen']} is not :{HTTP_PORT}")
    if "admin_token" in cfg.get("http", {}):
        R.warn(f"{label}: http.admin_token in a file; prefer CONTRAIL_ADMIN_TOKEN from a secret")
    if "auth" in cfg:
        R.check(cfg["auth"].get("mode") in AUTH_MODES, f"{label}: auth.mode",
                f"{cfg['auth'].get('mode')!r} not in {sorted(AUTH_MODES)}")
    for sec in ("limits", "drain"):
        for k, v in cfg.get(sec, {}).items():
            R.check(isinstance(v, int) and v > 0, f"{label}: {sec}.{k} is a positive integer",
                    repr(v))
    if SOURCE_SCHEMA is not None:
        src = SOURCE_SCHEMA
        why = "relay/src/config.rs does not accept it (deny_unknown_fields: the relay would refuse this file)"
        for k in cfg:
            R.check(k in src["top"], f"{label}: top-level key {k!r} exists in the relay's Config", why)
            if isinstance(cfg[k], dict) and k in src["sections"]:
                for sk in cfg[k]:
                    R.check(sk in src["sections"][k], f"{label}: key {k}.{sk} exists in the relay's config", why)
        for s in cfg.get("sinks", []):
            own = src.get("sink_by_type", {}).get(s.get("type"), set())
            for sk in s:
                R.check(sk in src["sink"] or sk in own,
                        f"{label}: sink key {sk!r} exists for a {s.get('type')} sink in the relay's config", why)
            if src["sink_types"] is not None:
                R.check(s.get("type") in src["sink_types"], f"{label}: sink type {s.get('type')!r} exists in the relay's SinkType",
                        f"relay/src/config.rs knows {sorted(src['sink_types'])}")
    sinks = cfg.get("sinks", [])
    R.check(isinstance(sinks, list) and len(sinks) > 0, f"{label}: at least one [[sinks]]")
    names = [s.get("name") for s in sinks]
    R.check(len(names) == len(set(names)), f"{label}: sink names unique", str(names))
    for s in sinks:
        n = s.get("name", "?")
        unknown = set(s) - SINK_KEYS
        R.check(not unknown, f"{label}: sink {n} keys", f"unknown {sorted(unknown)}")
        R.check(s.get("type") in SINK_TYPES, f"{label}: sink {n} type",
                f"{s.get('type')!r} not in {sorted(SINK_TYPES)}")
        if "required" in s:
            R.check(isinstance(s["required"], bool), f"{label}: sink {n} required is a bool")
        if s.get("type") == "nats_jetstream":
            R.check(str(s.get("url", "")).startswith(("nats://", "tls://")),
                    f"{label}: sink {n} has a nats:// url", repr(s.get("url")))
    return cfg


def drain_deadline_ms(cfg: dict[str, Any] | None) -> int:
    return int((cfg or {}).get("drain", {}).get("deadline_ms", 20000))


def check_probe_path(path: str, expected: str, what: str, endpoints: set[str]) -> None:
    R.check(path == expected, f"{what} path", f"{path!r}, expected {expected!r}")
    R.check(path in endpoints, f"{what} hits a contract endpoint", f"{path!r} not in CONTRACTS.md")


# ----------------------------------------------------------------------------- Dockerfile

def dockerfile_stages(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)]


def workspace_bins() -> dict[str, str]:
    """binary name -> package name, for every workspace member."""
    bins: dict[str, str] = {}
    ws = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for member in ws.get("workspace", {}).get("members", []):
        manifest = ROOT / member / "Cargo.toml"
        if not manifest.is_file():
            continue
        pkg = tomllib.loads(manifest.read_text())
        pname = pkg.get("package", {}).get("name", member)
        declared = pkg.get("bin", [])
        for b in declared:
            bins[b.get("name", pname)] = pname
        if not declared and (ROOT / member / "src" / "main.rs").is_file():
            bins[pname] = pname
        for f in (ROOT / member / "src" / "bin").glob("*.rs"):
            bins.setdefault(f.stem, pname)
    return bins


def check_dockerfile(env_vars: set[str]) -> None:
    R.begin("Dockerfile")
    path = DEPLOY / "Dockerfile"
    text = path.read_text()
    stages = dockerfile_stages(text)
    R.check("relay" in stages and "tools" in stages, "targets relay and tools exist", str(stages))
    R.check(bool(stages) and stages[-1] == "relay", "relay is the last (default) stage",
            f"last stage is {stages[-1] if stages else None}")
    expose = " ".join(re.findall(r"^EXPOSE\s+(.*)$", text, re.M))
    R.check(f"{QUIC_PORT}/udp" in expose.split(), f"EXPOSE {QUIC_PORT}/udp", expose)
    R.check(f"{HTTP_PORT}/tcp" in expose.split(), f"EXPOSE {HTTP_PORT}/tcp", expose)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    R.check(len(users) >= 2 and all(u.split(":")[0] == str(RELAY_UID) for u in users),
            f"USER {RELAY_UID} in the final stages", str(users))
    hc = re.search(r"^HEALTHCHECK.*?CMD\s+(\[.*?\])", text, re.M | re.S)
    if R.check(hc is not None, "HEALTHCHECK present"):
        cmd = json.loads(hc.group(1).replace("\\\n", " "))
        R.check(cmd[:2] == ["contrail-relay", "healthcheck"], "HEALTHCHECK uses contrail-relay healthcheck",
                str(cmd))
        R.check(any(str(HTTP_PORT) in c for c in cmd), f"HEALTHCHECK targets port {HTTP_PORT}", str(cmd))
    env_names = re.findall(r"(?:^ENV\s+|\\\n\s+)([A-Z_][A-Z0-9_]*)=", text, re.M)
    R.check(bool(env_names), "ENV lines found")
    check_env_names(env_names, env_vars, "Dockerfile ENV")
    bins = workspace_bins()
    for b, pkg in (("contrail-relay", "contrail-relay"), ("contrail-tail", "contrail-relay"),
                   ("contrail-loadgen", "contrail-loadgen")):
        R.check(b in text, f"Dockerfile copies {b}")
        if b not in bins:
            R.warn(f"binary {b} is not declared in the workspace yet (expected in package {pkg})")
        else:
            R.check(bins[b] == pkg, f"binary {b} comes from package {pkg}", f"found in {bins[b]}")
    for pkg in ("contrail-relay", "contrail-loadgen"):
        R.check(f"-p {pkg}" in text, f"cargo build -p {pkg}")
    ign = DEPLOY / "Dockerfile.dockerignore"
    R.check(ign.is_file() and "target" in ign.read_text(), "Dockerfile.dockerignore excludes target/")


# ----------------------------------------------------------------------------- compose

def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict((e.split("=", 1) + [""])[:2] for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_ports(svc: dict[str, Any]) -> set[tuple[int, str]]:
    out = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.add((int(p["target"]), p.get("protocol", "tcp")))
            continue
        proto = "tcp"
        if "/" in p:
            p, proto = p.rsplit("/", 1)
        out.add((int(p.rsplit(":", 1)[-1]), proto))
    return out


def parse_duration_s(v: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(v))
    if not m:
        return 0.0
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def check_compose(env_vars: set[str], endpoints: set[str]) -> None:
    R.begin("compose")
    cdir = DEPLOY / "compose"
    path = cdir / "compose.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        R.check(False, "compose.yaml parses", str(e))
        return
    R.check(True, "compose.yaml parses")
    services = doc.get("services", {})
    for need in ("relay-a", "relay-b", "redis", "nats", "prometheus", "grafana"):
        R.check(need in services, f"service {need} defined")
    stages = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    relays = {n: s for n, s in services.items()
              if (s.get("build") or {}).get("target") == "relay"}
    R.check(set(relays) >= {"relay-a", "relay-b"}, "relay-a and relay-b build target relay",
            str(sorted(relays)))
    relay_ids = []
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = (cdir / build.get("context", ".")).resolve()
            R.check((ctx / build.get("dockerfile", "Dockerfile")).is_file(),
                    f"{name}: build dockerfile exists", str(ctx / build.get("dockerfile", "")))
            R.check(ctx == ROOT, f"{name}: build context is the repository root", str(ctx))
            R.check(build.get("target") in stages, f"{name}: build target exists in Dockerfile",
                    str(build.get("target")))
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                R.check((cdir / src).exists(), f"{name}: mount source {src} exists")
        if name in relays or name == "tools":
            check_env_names(compose_env(svc), env_vars, f"compose {name}")
    nats_cmd = " ".join(services.get("nats", {}).get("command") or [])
    R.check("-js" in nats_cmd.split(), "nats runs with JetStream (-js)", nats_cmd)
    for name, svc in relays.items():
        env = compose_env(svc)
        relay_ids.append(env.get("RELAY_ID"))
        R.check(bool(env.get("RELAY_ID")), f"{name}: RELAY_ID set")
        for k, port in (("CONTRAIL_LISTEN", QUIC_PORT), ("CONTRAIL_HTTP_LISTEN", HTTP_PORT)):
            if k in env:
                R.check(port_of(env[k]) == port, f"{name}: {k} port", env[k])
        ports = compose_ports(svc)
        R.check((QUIC_PORT, "udp") in ports, f"{name}: publishes container {QUIC_PORT}/udp", str(ports))
        R.check((HTTP_PORT, "tcp") in ports, f"{name}: publishes container {HTTP_PORT}/tcp", str(ports))
        test = (svc.get("healthcheck") or {}).get("test") or []
        R.check(test[1:3] == ["contrail-relay", "healthcheck"], f"{name}: healthcheck command", str(test))
        R.check(any(f":{HTTP_PORT}" in t for t in test), f"{name}: healthcheck port {HTTP_PORT}", str(test))
        R.check(str(svc.get("user", "")).split(":")[0] == str(RELAY_UID), f"{name}: user {RELAY_UID}")
        R.check(svc.get("read_only") is True, f"{name}: read-only root filesystem")
        cfg_path = env.get("CONTRAIL_CONFIG")
        cfg = None
        if R.check(bool(cfg_path), f"{name}: CONTRAIL_CONFIG set"):
            src = None
            for vol in svc.get("volumes") or []:
                parts = vol.split(":") if isinstance(vol, str) else [vol.get("source"), vol.get("target")]
                if len(parts) >= 2 and parts[1] == cfg_path:
                    src = cdir / parts[0]
            if R.check(src is not None and src.is_file(), f"{name}: CONTRAIL_CONFIG {cfg_path} is a mounted file"):
                cfg = check_relay_toml(src.read_text(), f"compose {src.name}")
        if cfg:
            host = str(cfg.get("redis", {}).get("addr", env.get("REDIS_ADDR", ""))).split(":")[0]
            if "REDIS_ADDR" in env:
                host = env["REDIS_ADDR"].split(":")[0]
            R.check(host in services, f"{name}: redis host {host!r} is a compose service")
            for s in cfg.get("sinks", []):
                if s.get("type") == "nats_jetstream":
                    h = re.sub(r"^\w+://", "", s.get("url", "")).split(":")[0]
                    R.check(h in services, f"{name}: NATS host {h!r} is a compose service")
            grace = parse_duration_s(svc.get("stop_grace_period", "10s")) * 1000
            R.check(grace > drain_deadline_ms(cfg) + DRAIN_MARGIN_MS - 1,
                    f"{name}: stop_grace_period > drain.deadline_ms + {DRAIN_MARGIN_MS} ms",
                    f"{grace} ms vs {drain_deadline_ms(cfg)} ms")
    R.check(len(relay_ids) == len(set(relay_ids)), "RELAY_IDs are distinct", str(relay_ids))
    # Prometheus scrapes every relay service on 2112, with the rules loaded.
    prom = services.get("prometheus", {})
    mounts = [v.split(":") for v in prom.get("volumes") or [] if isinstance(v, str)]
    prom_dir = next(((cdir / m[0]).resolve() for m in mounts if m[1] == "/etc/prometheus"), None)
    R.check(prom_dir == (DEPLOY / "observability" / "prometheus").resolve(),
            "prometheus mounts deploy/observability/prometheus at /etc/prometheus", str(prom_dir))
    pconf = yaml.safe_load((DEPLOY / "observability" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in pconf.get("scrape_configs", []) if job.get("job_name") == "contrail-relay"
               for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
    want = {f"{n}:{HTTP_PORT}" for n in relays}
    R.check(targets == want, "prometheus scrapes exactly the relay services on 2112",
            f"targets {sorted(targets)}, relays {sorted(want)}")
    R.check("alerts.yml" in (pconf.get("rule_files") or []), "prometheus loads alerts.yml")
    # Grafana: provisioning mounted, dashboard directory matches the provider path.
    graf = services.get("grafana", {})
    gm = {m[1]: (cdir / m[0]).resolve() for m in (v.split(":") for v in graf.get("volumes") or [])}
    R.check(gm.get("/etc/grafana/provisioning") == (cdir / "grafana" / "provisioning").resolve(),
            "grafana provisioning mounted")
    prov = yaml.safe_load((cdir / "grafana/provisioning/dashboards/contrail.yaml").read_text())
    dpath = prov["providers"][0]["options"]["path"]
    R.check(gm.get(dpath) == (DEPLOY / "observability" / "grafana").resolve(),
            "grafana dashboard provider path is the mounted dashboard directory", dpath)
    ds = yaml.safe_load((cdir / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    R.check(ds["datasources"][0]["url"] == "http://prometheus:9090" and ds["datasources"][0]["uid"] == "prometheus",
            "grafana datasource points at the prometheus service with uid prometheus")


# ----------------------------------------------------------------------------- kubernetes

def resolve_port(port: Any, container: dict[str, Any]) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(env_vars: set[str], endpoints: set[str]) -> None:
    R.begin("kubernetes")
    kdir = DEPLOY / "k8s"
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    resources = kust.get("resources", [])
    for r in resources:
        R.check((kdir / r).is_file(), f"kustomization resource {r} exists")
    listed = set(resources) | {"kustomization.yaml", "secret.example.yaml"}
    for f in sorted(kdir.glob("*.yaml")):
        R.check(f.name in listed, f"{f.name} is listed in kustomization.yaml resources")
    docs: list[dict[str, Any]] = []
    for f in sorted(kdir.glob("*.yaml")):
        try:
            for d in yaml.safe_load_all(f.read_text()):
                if d:
                    d["__file__"] = f.name
                    docs.append(d)
        except yaml.YAMLError as e:
            R.check(False, f"{f.name} parses", str(e))
    R.check(True, "all Kubernetes YAML parses")
    # ConfigMap from the generator.
    cm_files: dict[str, dict[str, Path]] = {}
    for gen in kust.get("configMapGenerator", []):
        for fname in gen.get("files", []):
            key, _, src = fname.partition("=")
            src = src or key
            cm_files.setdefault(gen["name"], {})[Path(key).name] = kdir / src
    cfg = None
    for name, files in cm_files.items():
        for key, src in files.items():
            if R.check(src.is_file(), f"configMapGenerator {name} file {src.name} exists") and key.endswith(".toml"):
                cfg = check_relay_toml(src.read_text(), f"k8s {src.name}")
    secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if not R.check(len(deps) == 1, "exactly one Deployment"):
        return
    dep = deps[0]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    R.check(labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selector matches pod labels")
    containers = {c["name"]: c for c in spec["containers"]}
    c = containers.get("relay")
    if not R.check(c is not None, "container relay exists"):
        return
    env = {e["name"]: e for e in c.get("env", [])}
    check_env_names(env, env_vars, "k8s relay container")
    rid = env.get("RELAY_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    R.check(rid == "metadata.name", "RELAY_ID comes from the pod name (downward API)", str(rid))
    for k, port in (("CONTRAIL_LISTEN", QUIC_PORT), ("CONTRAIL_HTTP_LISTEN", HTTP_PORT)):
        if "value" in env.get(k, {}):
            R.check(port_of(env[k]["value"]) == port, f"{k} port", env[k]["value"])
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in c.get("ports", [])}
    R.check((QUIC_PORT, "UDP") in ports, f"containerPort {QUIC_PORT}/UDP", str(ports))
    R.check((HTTP_PORT, "TCP") in ports, f"containerPort {HTTP_PORT}/TCP", str(ports))
    for probe, path in (("readinessProbe", READY_PATH), ("livenessProbe", HEALTH_PATH), ("startupProbe", HEALTH_PATH)):
        hg = (c.get(probe) or {}).get("httpGet")
        if probe == "startupProbe" and hg is None:
            continue
        if R.check(hg is not None, f"{probe} is an httpGet"):
            check_probe_path(hg.get("path"), path, probe, endpoints)
            R.check(resolve_port(hg.get("port"), c) == HTTP_PORT, f"{probe} port resolves to {HTTP_PORT}")
    # Volumes and mounts.
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: vols.get(m["name"], {}) for m in c.get("volumeMounts", [])}
    for m in c.get("volumeMounts", []):
        R.check(m["name"] in vols, f"volumeMount {m['name']} has a volume")

    def file_source(path: str) -> tuple[str, str, str] | None:
        """(kind, object name, key) of the ConfigMap/Secret key mounted at path."""
        d, _, fname = path.rpartition("/")
        v = mounts.get(d)
        if not v:
            return None
        for kind, ref in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if ref in v:
                name = v[ref].get("name") or v[ref].get("secretName")
                items = v[ref].get("items")
                if items:
                    key = next((i["key"] for i in items if i["path"] == fname), None)
                    return (kind, name, key) if key else None
                return kind, name, fname
        return None

    def secret_has(name: str, key: str) -> bool:
        s = secrets.get(name, {})
        return key in (s.get("stringData") or {}) or key in (s.get("data") or {})

    cfg_path = env.get("CONTRAIL_CONFIG", {}).get("value")
    src = file_source(cfg_path or "")
    R.check(src is not None and src[0] == "ConfigMap" and src[2] in cm_files.get(src[1], {}),
            f"CONTRAIL_CONFIG {cfg_path} is a key of the generated ConfigMap", str(src))
    for var in ("CONTRAIL_AUTH_TOKENS_FILE", "CONTRAIL_TLS_CERT", "CONTRAIL_TLS_KEY"):
        if "value" in env.get(var, {}):
            s = file_source(env[var]["value"])
            R.check(s is not None and s[0] == "Secret" and secret_has(s[1], s[2]),
                    f"{var} {env[var]['value']} is mounted from a Secret key (secret.example.yaml)", str(s))
    for k in ("cert", "key"):
        p = (cfg or {}).get("tls", {}).get(k)
        if p:
            s = file_source(p)
            R.check(s is not None and s[0] == "Secret" and secret_has(s[1], s[2]),
                    f"tls.{k} {p} is mounted from a Secret key", str(s))
    for name, e in env.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            R.check(secret_has(ref["name"], ref["key"]), f"env {name}: secret {ref['name']}/{ref['key']} in secret.example.yaml")
    # preStop drain.
    pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [])
    R.check(pre[:2] == ["contrail-relay", "drain"], "preStop runs contrail-relay drain", str(pre))
    if "--url" in pre:
        url = pre[pre.index("--url") + 1]
        R.check(port_of(url.rstrip("/")) == HTTP_PORT and "127.0.0.1" in url, "preStop --url is the local admin port", url)
    if R.check("--token-file" in pre, "preStop passes --token-file"):
        tf = pre[pre.index("--token-file") + 1]
        s = file_source(tf)
        R.check(s is not None and s[0] == "Secret" and secret_has(s[1], s[2]), f"token file {tf} is mounted from a Secret key", str(s))
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    R.check(tgps * 1000 > drain_deadline_ms(cfg) + DRAIN_MARGIN_MS,
            "terminationGracePeriodSeconds > drain.deadline_ms + margin", f"{tgps}s vs {drain_deadline_ms(cfg)}ms")
    # Security context.
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    R.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "runAsNonRoot")
    R.check(csc.get("runAsUser", psc.get("runAsUser")) == RELAY_UID, f"runAsUser {RELAY_UID}")
    R.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    R.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    R.check("ALL" in (csc.get("capabilities") or {}).get("drop", []), "capabilities drop ALL")
    req = (c.get("resources") or {}).get("requests", {})
    R.check("cpu" in req and "memory" in req, "resource requests set")
    # Services.
    svcs = [d for d in docs if d.get("kind") == "Service"]
    lb = [s for s in svcs if s["spec"].get("type") == "LoadBalancer"]
    if R.check(len(lb) == 1, "one LoadBalancer Service"):
        p = lb[0]["spec"]["ports"]
        R.check(any(x.get("protocol") == "UDP" and x["port"] == QUIC_PORT and resolve_port(x.get("targetPort", x["port"]), c) == QUIC_PORT
                    for x in p), f"LoadBalancer exposes UDP {QUIC_PORT} -> container {QUIC_PORT}", str(p))
        R.check(labels_match(lb[0]["spec"]["selector"], pod_labels), "LoadBalancer selector matches pods")
    cip = [s for s in svcs if s["spec"].get("type", "ClusterIP") == "ClusterIP"]
    R.check(any(any(x.get("protocol", "TCP") == "TCP" and x["port"] == HTTP_PORT and resolve_port(x.get("targetPort", x["port"]), c) == HTTP_PORT
                    for x in s["spec"]["ports"]) and labels_match(s["spec"]["selector"], pod_labels) for s in cip),
            f"ClusterIP Service for TCP {HTTP_PORT} selecting the pods")
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    R.check(len(pdbs) == 1 and labels_match(pdbs[0]["spec"]["selector"]["matchLabels"], pod_labels),
            "PodDisruptionBudget selects the relay pods")
    ann = pod["metadata"].get("annotations", {})
    R.check(ann.get("prometheus.io/port") == str(HTTP_PORT), "prometheus.io/port annotation is 2112")


# ----------------------------------------------------------------------------- terraform

def unq(v: Any) -> Any:
    """Normalise python-hcl2 output: strip the quotes it keeps around strings and keys,
    drop its __comments__/__is_block__ markers."""
    if isinstance(v, dict):
        return {unq(k): unq(x) for k, x in v.items() if k not in ("__comments__", "__is_block__")}
    if isinstance(v, list):
        return [unq(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def tf_blocks(docs: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for d in docs:
        for entry in d.get(kind, []):
            for rtype, named in entry.items():
                for rname, body in named.items():
                    out[(rtype, rname)] = body
    return out


def check_terraform(env_vars: set[str], endpoints: set[str], metrics: set[str]) -> None:
    R.begin("terraform")
    tdir = DEPLOY / "terraform" / "aws"
    if hcl2 is None:
        R.check(False, "python-hcl2 importable", "pip install python-hcl2 (validate.sh does)")
        return
    docs = []
    for f in sorted(tdir.glob("*.tf")):
        try:
            with f.open() as fh:
                docs.append(unq(hcl2.load(fh)))
            R.check(True, f"{f.name} parses")
        except Exception as e:  # the parser raises lark errors of several types
            R.check(False, f"{f.name} parses as HCL2", f"{type(e).__name__}: {e}")
    variables = {}
    for d in docs:
        for entry in d.get("variable", []):
            variables.update(entry)
    for name, body in variables.items():
        R.check(bool(body.get("description")), f"variable {name} has a description")
        R.check("type" in body, f"variable {name} has a type")
        if body.get("sensitive") is True:
            R.check(body.get("default", "") in ("", None), f"sensitive variable {name} has no real default")
    readme = (DEPLOY / "README.md").read_text() if (DEPLOY / "README.md").is_file() else ""
    for name in variables:
        R.check(f"| `{name}` |" in readme, f"variable {name} is documented in deploy/README.md")
    outputs = {}
    for d in docs:
        for entry in d.get("output", []):
            outputs.update(entry)
    for name in outputs:
        R.check(f"| `{name}` |" in readme, f"output {name} is documented in deploy/README.md")
    locals_ = {}
    for d in docs:
        for entry in d.get("locals", []):
            locals_.update(entry)
    res = tf_blocks(docs, "resource")
    secret_names = {n for (t, n) in res if t == "aws_secretsmanager_secret"}
    relay_secret_arns = " ".join(locals_.get("relay_secret_arns", []))
    # Containers.
    containers = {k: v for k, v in locals_.items() if k.endswith("_container") and isinstance(v, dict)}
    R.check({"relay_container", "config_init_container"} <= set(containers), "relay and config-init containers defined",
            str(sorted(containers)))
    run_dir = locals_.get("run_dir", "")
    for cname, cdef in containers.items():
        names = [e["name"] for e in cdef.get("environment", [])] + [s["name"] for s in cdef.get("secrets", [])]
        check_env_names(names, env_vars, f"terraform {cname}")
        for s in cdef.get("secrets", []):
            m = re.match(r"\$\{aws_secretsmanager_secret\.(\w+)\.arn\}$", s["valueFrom"])
            R.check(m is not None and m.group(1) in secret_names, f"{cname}: secret {s['name']} is a managed secret", s["valueFrom"])
            if m:
                R.check(f"aws_secretsmanager_secret.{m.group(1)}.arn" in relay_secret_arns,
                        f"{cname}: secret {m.group(1)} is in the execution role's allowed list")
        if cdef.get("image") == "${var.relay_image}":
            R.check(cdef.get("readonlyRootFilesystem") is True, f"{cname}: read-only root filesystem")
    relay = containers.get("relay_container", {})
    ports = {(p["containerPort"], p["protocol"]) for p in relay.get("portMappings", [])}
    R.check((QUIC_PORT, "udp") in ports and (HTTP_PORT, "tcp") in ports, "relay portMappings 4433/udp and 2112/tcp", str(ports))
    R.check(str(relay.get("user", "")).split(":")[0] == str(RELAY_UID), f"relay runs as {RELAY_UID}")
    hc = relay.get("healthCheck", {}).get("command", [])
    R.check(hc[1:3] == ["contrail-relay", "healthcheck"] and any(f":{HTTP_PORT}" in x for x in hc),
            "relay container healthCheck: contrail-relay healthcheck on 2112", str(hc))
    renv = {e["name"]: e["value"] for e in relay.get("environment", [])}
    for k, port in (("CONTRAIL_LISTEN", QUIC_PORT), ("CONTRAIL_HTTP_LISTEN", HTTP_PORT)):
        if k in renv:
            R.check(port_of(renv[k]) == port, f"relay {k} port", renv[k])
    cfg_path = renv.get("CONTRAIL_CONFIG", "").replace("${local.run_dir}", run_dir)
    script = locals_.get("config_init_script", "")
    R.check(cfg_path == f"{run_dir}/relay.toml" and "relay.toml" in script,
            "CONTRAIL_CONFIG is the file config-init writes", cfg_path)
    tokens_path = renv.get("CONTRAIL_AUTH_TOKENS_FILE", "").replace("${local.run_dir}", run_dir)
    if tokens_path:
        R.check(Path(tokens_path).name in script, "CONTRAIL_AUTH_TOKENS_FILE is a file config-init writes", tokens_path)
    # relay.toml template: variables agree with templatefile() and the result parses.
    tpl_path = tdir / "templates" / "relay.toml.tftpl"
    tpl = tpl_path.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", tpl))
    main_tf = (tdir / "main.tf").read_text()
    m = re.search(r'templatefile\("\$\{path\.module\}/templates/relay\.toml\.tftpl",\s*\{(.*?)\}\)', main_tf, re.S)
    args = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)\s*$", m.group(1), re.M)) if m else {}
    R.check(placeholders == set(args), "relay.toml.tftpl placeholders == templatefile() arguments",
            f"template {sorted(placeholders)}, passed {sorted(args)}")
    # Render with each variable's default, or a sample for values without one.
    samples = {"local.redis_addr": "rediss://master.example.cache.amazonaws.com:6379",
               "var.nats_url": "nats://nats.example.internal:4222"}
    values = {}
    for ph, expr in args.items():
        var = expr[4:] if expr.startswith("var.") else None
        if var and variables.get(var, {}).get("default") is not None:
            values[ph] = variables[var]["default"]
        elif expr in samples:
            values[ph] = samples[expr]
        else:
            R.check(False, f"relay.toml.tftpl: a sample value for {ph} = {expr}", "add one to validate.py")
            values[ph] = "x"
    rendered = re.sub(r"\$\{(\w+)\}", lambda mm: str(values.get(mm.group(1), "x")), tpl)
    cfg = check_relay_toml(rendered, "terraform relay.toml.tftpl")
    for k in ("cert", "key"):
        p = (cfg or {}).get("tls", {}).get(k, "")
        R.check(p.startswith(run_dir + "/") and Path(p).name in script, f"tls.{k} is a file config-init writes", p)
    # Drain timing.
    drain_default = variables.get("drain_deadline_ms", {}).get("default", 0)
    stop_default = variables.get("stop_timeout_seconds", {}).get("default", 0)
    R.check(stop_default * 1000 > drain_default + DRAIN_MARGIN_MS, "stop_timeout_seconds default > drain_deadline_ms + margin",
            f"{stop_default}s vs {drain_default}ms")
    R.check(relay.get("stopTimeout") == "${var.stop_timeout_seconds}", "relay stopTimeout uses stop_timeout_seconds")
    # Load balancers.
    tgq = res.get(("aws_lb_target_group", "quic"), {})
    R.check(tgq.get("port") == QUIC_PORT and tgq.get("protocol") == "UDP", "QUIC target group UDP 4433")
    hcq = (tgq.get("health_check") or [{}])[0]
    R.check(hcq.get("protocol") == "HTTP" and str(hcq.get("port")) == str(HTTP_PORT), "QUIC target group health check HTTP on 2112")
    if hcq.get("path"):
        check_probe_path(hcq["path"], READY_PATH, "QUIC target group health check", endpoints)
    R.check("drain_deadline_ms" in str(tgq.get("deregistration_delay")), "QUIC deregistration_delay derives from drain_deadline_ms")
    tga = res.get(("aws_lb_target_group", "admin"), {})
    R.check(tga.get("port") == HTTP_PORT and tga.get("protocol") == "TCP", "admin target group TCP 2112")
    hca = (tga.get("health_check") or [{}])[0]
    check_probe_path(hca.get("path", ""), HEALTH_PATH, "admin target group health check", endpoints)
    listeners = {(b.get("port"), b.get("protocol")) for (t, _), b in res.items() if t == "aws_lb_listener"}
    R.check((QUIC_PORT, "UDP") in listeners and (HTTP_PORT, "TCP") in listeners, "listeners UDP 4433 and TCP 2112", str(listeners))
    R.check(res.get(("aws_lb", "admin"), {}).get("internal") is True, "admin NLB is internal")
    svc = res.get(("aws_ecs_service", "relay"), {})
    lbs = {(b.get("container_name"), b.get("container_port")) for b in svc.get("load_balancer", [])}
    R.check(lbs == {("relay", QUIC_PORT), ("relay", HTTP_PORT)}, "ECS service registers relay:4433 and relay:2112", str(lbs))
    net = (svc.get("network_configuration") or [{}])[0]
    R.check(net.get("assign_public_ip") is False and "private" in str(net.get("subnets")), "relays run in private subnets without public IPs")
    # Redis secure defaults.
    rg = res.get(("aws_elasticache_replication_group", "redis"), {})
    R.check(rg.get("transit_encryption_enabled") is True, "ElastiCache transit encryption on")
    R.check(rg.get("at_rest_encryption_enabled") is True, "ElastiCache at-rest encryption on")
    R.check(bool(rg.get("auth_token")), "ElastiCache auth token set")
    R.check(str(locals_.get("redis_addr", "")).startswith("rediss://"), "relays reach Redis over TLS (rediss://)")
    # Alarms use contract metric names, or a series the ADOT collector derives from one (a
    # histogram bucket renamed into a counter of its own: `replacement: NAME` after a regex on
    # a contract `_bucket` series).
    adot = (tdir / "templates" / "adot-config.yaml.tftpl").read_text()
    derived = {}
    for src, name in re.findall(r'regex: "(contrail_[a-z_]+_bucket);[^"]*"\s*\n\s*target_label: __name__\s*\n\s*replacement: (contrail_[a-z_]+)', adot):
        R.check(src in metrics, f"ADOT derives {name} from contract metric {src}")
        derived[name] = src
    for (t, n), b in res.items():
        if t != "aws_cloudwatch_metric_alarm":
            continue
        used = []
        if b.get("namespace") == "${local.metrics_namespace}":
            used.append(b.get("metric_name"))
        for q in b.get("metric_query") or []:
            for mq in q.get("metric") or []:
                if mq.get("namespace") == "${local.metrics_namespace}":
                    used.append(mq.get("metric_name"))
        for name in used:
            R.check(name in metrics or name in derived, f"alarm {n} metric {name} is a contract metric (or derived from one)")
            R.check(name not in derived or f'"{name}"' in adot, f"alarm {n} metric {name} is exported by the ADOT collector")
    for name in set(re.findall(r'"(contrail_[a-z_]+)"', adot)):
        R.check(name in metrics or name in derived, f"ADOT selector {name} is a contract metric (or derived from one)")
    # terraform fmt when the binary exists (works offline; `validate` needs providers).
    tf = shutil.which("terraform")
    if tf:
        p = subprocess.run([tf, "fmt", "-check", "-recursive", str(tdir)], capture_output=True, text=True)
        R.check(p.returncode == 0, "terraform fmt -check", p.stdout.strip() or p.stderr.strip())
    else:
        R.warn("terraform binary not found: skipped terraform fmt -check (HCL parsed with python-hcl2)")


# ----------------------------------------------------------------------------- observability

def promql_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(contrail_[a-z0-9_]+)\b", expr))


def check_observability(metrics: set[str]) -> None:
    R.begin("observability")
    odir = DEPLOY / "observability"
    rules = yaml.safe_load((odir / "prometheus" / "alerts.yml").read_text())
    runbook = (DEPLOY / "RUNBOOK.md").read_text() if (DEPLOY / "RUNBOOK.md").is_file() else ""
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+\s+(.*)$", runbook, re.M)}
    alerts = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            for m in promql_metrics(r["expr"]):
                R.check(m in metrics, f"rule {r.get('alert')} uses contract metric {m}")
            if "alert" in r:
                alerts.append(r["alert"])
                anchor = r.get("annotations", {}).get("runbook", "").partition("#")[2]
                R.check(anchor == r["alert"].lower() and anchor in headings,
                        f"alert {r['alert']} links to a RUNBOOK.md section", anchor)
    for need in ("ContrailRelayNotReady", "ContrailSinkDropping", "ContrailAckLatencyP99High",
                 "ContrailRedisPublishErrors", "ContrailCreditsExhaustedSpike"):
        R.check(need in alerts, f"alert {need} defined")
    dash = json.loads((odir / "grafana" / "contrail-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash.get("templating", {}).get("list", []) if v.get("definition")]
    used = set()
    for e in exprs:
        used |= promql_metrics(e)
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    for m in sorted(used):
        R.check(m in metrics, f"dashboard metric {m} is a contract metric")
    for need in ("contrail_frames_received_total", "contrail_sessions_active", "contrail_credits_exhausted_total",
                 "contrail_sink_queue_depth", "contrail_sink_dropped_total", "contrail_frame_age_seconds",
                 "contrail_ack_latency_seconds", "contrail_sink_write_latency_seconds"):
        R.check(need in used or need in families, f"dashboard shows {need}")
    ids = [p["id"] for p in dash["panels"]]
    R.check(len(ids) == len(set(ids)), "dashboard panel ids unique")


# ----------------------------------------------------------------------------- relay CLI

def relay_subcommands() -> set[str]:
    """Names of the clap subcommands of the relay binary (variants of a `#[derive(Subcommand)]` enum)."""
    names: set[str] = set()
    for path in (ROOT / "relay" / "src").rglob("*.rs"):
        text = path.read_text()
        for m in re.finditer(r"derive\([^)]*\bSubcommand\b[^)]*\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?enum\s+\w+\s*\{(.*?)\n\}",
                             text, re.S):
            # Strip whole-line comments only: `//` also occurs inside strings such as URLs.
            body = re.sub(r"^\s*//[^\n]*", "", m.group(1), flags=re.M)
            depth, top = 0, []
            for ch in body:  # keep only top-level text (variant names, not their fields)
                depth += ch in "{("
                depth -= ch in "})"
                top.append(ch if depth == 0 else " ")
            for v in re.findall(r"^\s*(?:#\[[^\]]*\]\s*)*([A-Z]\w*)", "".join(top), re.M):
                names.add(snake(v).replace("_", "-"))
            for r in re.findall(r'command\s*\(\s*name\s*=\s*"([^"]+)"', m.group(1)):
                names.add(r)
    return names


def check_relay_cli() -> None:
    R.begin("relay CLI the assets assume")
    subs = relay_subcommands()
    for sub, why in (("healthcheck", "image HEALTHCHECK, compose and ECS health checks"),
                     ("drain", "Kubernetes preStop hook")):
        if sub in subs:
            R.check(True, f"contrail-relay {sub} subcommand present")
        else:
            R.warn(f"`contrail-relay {sub}` subcommand not found in relay/src yet (used by the {why}); "
                   f"subcommands found: {sorted(subs) or 'none'}")


def main() -> int:
    global R, SOURCE_SCHEMA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true", help="treat warnings as failures")
    args = ap.parse_args()
    R = Report(args.strict)
    R.begin("contract")
    env_vars, source = load_env_vars()
    metrics = load_metric_names()
    endpoints = load_endpoints()
    SOURCE_SCHEMA = load_source_schema()
    if SOURCE_SCHEMA is None:
        R.warn("relay/src/config.rs has no parsable `pub struct Config`: config keys checked against the documented shape only")
    else:
        print(f"  config keys from relay/src/config.rs: top {sorted(SOURCE_SCHEMA['top'])}; "
              f"sink types {sorted(SOURCE_SCHEMA['sink_types'] or [])}")
    print(f"  {len(env_vars)} env vars from {source}; {len(metrics)} metric names and "
          f"{len(endpoints)} endpoints from CONTRACTS.md")
    R.check(len(env_vars) > 5 and len(metrics) > 10 and {HEALTH_PATH, READY_PATH} <= endpoints,
            "contract lists loaded")
    for section in (lambda: check_dockerfile(env_vars), lambda: check_compose(env_vars, endpoints),
                    lambda: check_k8s(env_vars, endpoints),
                    lambda: check_terraform(env_vars, endpoints, metrics),
                    lambda: check_observability(metrics), check_relay_cli):
        try:
            section()
        except Exception as e:  # a malformed asset must fail the run with a message, not a traceback only
            R.check(False, "section crashed", f"{type(e).__name__}: {e}")
    print()
    for w in R.warnings:
        print(f"warning: {w}")
    for f in R.failed:
        print(f"FAILED: {f}")
    failed = len(R.failed) + (len(R.warnings) if args.strict else 0)
    print(f"validate: {R.passed} passed, {failed} failed, {len(R.warnings)} warnings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
