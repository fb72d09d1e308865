"""The machine's description and the markdown report of one run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from bench.checks import WORKLOADS
from bench.servers import SERVERS

ROOT = Path(__file__).resolve().parent.parent

DISTRIBUTIONS = (
    "wsgipool",
    "aiohttp",
    "multiprocess",
    "psutil",
    "uvloop",
    "gunicorn",
    "granian",
    "pyuwsgi",
    "aiohttp-wsgi",
    "uvicorn",
    "a2wsgi",
    "httptools",
    "h11",
    "waitress",
    "django",
    "py-spy",
)

MIB = 1024 * 1024
#: Servers whose main process's CPU per request is shown beside the tree's.
MAIN_SHOWN = frozenset(
    {"wsgipool", "wsgipool-base", "wsgipool-metrics", "forward", "forward-parse"}
)

# -- the machine --------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """The commit of the checkout, '+dirty' when it has changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def command_line() -> str:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def machine(wrk_version: str) -> dict[str, Any]:
    uname = platform.uname()
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cpus": affinity,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": f"{uname.system} {uname.release} {uname.version}",
        "architecture": uname.machine,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "packages": versions(),
        "wrk": wrk_version,
        "git": git_revision(),
        "command": command_line(),
        "load_average_at_start": list(os.getloadavg()),
    }


# -- formatting -----------------------------------------------------------------------


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / MIB:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def us_text(value: float | None) -> str:
    """CPU µs per request as shown in the tables."""
    return "-" if value is None else f"{value:,.0f}"


def _spread_text(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['median']:.2f}x ({entry['min']:.2f}-{entry['max']:.2f})"


def _table(header: list[str], rows: Iterable[list[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def errors_text(result: dict[str, Any]) -> str:
    total = int(result["errors"])
    if not total:
        return "0"
    parts = []
    for key, label in (
        ("errors_connect", "connect"),
        ("errors_read", "read"),
        ("errors_write", "write"),
        ("errors_timeout", "timeout"),
        ("errors_status", "non-2xx"),
        ("wrong_bodies", "wrong body"),
    ):
        if result.get(key):
            parts.append(f"{label} {result[key]:,}")
    statuses = result.get("statuses") or {}
    odd = {code: n for code, n in statuses.items() if not code.startswith(("2", "3"))}
    if odd:
        parts.append("statuses " + ", ".join(f"{c}: {n:,}" for c, n in sorted(odd.items())))
    return f"{total:,} ({', '.join(parts)})"


def _ok(cells: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (c["workload"], c["server"]): c for c in cells if c["kind"] == kind and c["status"] == "ok"
    }


def ratio(cells: list[dict[str, Any]], workload: str, peer: str, key: str = "rps") -> float | None:
    ok = _ok(cells, "bench")
    mine, theirs = ok.get((workload, "wsgipool")), ok.get((workload, peer))
    if not mine or not theirs:
        return None
    if key == "pss":
        a, b = mine["memory"]["peak_tree_pss"], theirs["memory"]["peak_tree_pss"]
    elif key in ("tree_us_per_request", "main_us_per_request"):
        a, b = (mine.get("cpu") or {}).get(key), (theirs.get("cpu") or {}).get(key)
        if a is None or b is None:
            return None
    else:
        a, b = mine["result"][key], theirs["result"][key]
    return a / b if b else None


def rps_ratio(results: dict[str, Any], workload: str, peer: str) -> float | None:
    """wsgipool ÷ peer in req/s: the median of the per-round ratios of an interleaved run."""
    entry = (results.get("interleaved") or {}).get(workload, {}).get(peer)
    if entry is not None:
        return entry["rps"]["median"] if entry["rps"] else None
    return ratio(results["cells"], workload, peer)


def rps_ratio_text(results: dict[str, Any], workload: str, peer: str) -> str:
    """As `rps_ratio`, with the spread (min-max over the rounds) when interleaved."""
    entry = (results.get("interleaved") or {}).get(workload, {}).get(peer)
    if entry is not None:
        return _spread_text(entry["rps"])
    return _ratio(ratio(results["cells"], workload, peer))


def _is_wsgipool(name: str) -> bool:
    """A wsgipool build (itself, --baseline, metrics on): its main process is the frontend."""
    return name in MAIN_SHOWN


def _cpu_of(cell: dict[str, Any] | None, key: str) -> float | None:
    if cell is None:
        return None
    value = (cell.get("cpu") or {}).get(key)
    return None if value is None else float(value)


# -- the issue's targets ---------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    cells = results["cells"]
    settings = results["settings"]
    out: list[dict[str, Any]] = []

    def add(text: str, value: float | None, goal: float, higher: bool, shown: str) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": text, "measured": value, "shown": shown, "met": met})

    for issue, workload, peer, goal in (
        (5, "hello", "gunicorn-gthread", 1.0),
        (5, "hello", "aiohttp-wsgi", 1.4),
        (5, "cpu", "gunicorn-sync", 1.3),
        (5, "big", "gunicorn-gthread", 1.0),
        (13, "django", "gunicorn-sync", 1.0),
        (13, "django", "gunicorn-gthread", 1.0),
        (13, "cpu", "granian", 0.95),
        (13, "echo", "gunicorn-gthread", 1.0),
    ):
        value = rps_ratio(results, workload, peer)
        add(
            f"{workload} ≥ {goal} x {SERVERS[peer].label} (issue {issue})",
            value,
            goal,
            True,
            rps_ratio_text(results, workload, peer),
        )
    ceiling = settings["workers"] * settings["threads"] / 0.05
    sleep = _ok(cells, "bench").get(("sleep", "wsgipool"))
    value = sleep["result"]["rps"] / ceiling if sleep else None
    add(
        f"sleep within 5% of the thread ceiling ({ceiling:,.0f} req/s) (issue 5)",
        value,
        0.95,
        True,
        "-" if value is None else f"{value:.1%} of it",
    )
    value = ratio(cells, "hello", "gunicorn-gthread", key="pss")
    text = "hello: whole-tree PSS ≤ 1.5 x gunicorn gthread (issue 13)"
    add(text, value, 1.5, False, _ratio(value))
    for kind in ("recycle", "leak", "kill"):
        cell = next((c for c in cells if c["kind"] == kind and c["server"] == "wsgipool"), None)
        if cell and cell["status"] == "ok":
            failed: float | None = float(cell["result"]["errors"])
        else:
            failed = None
        text = f"{kind}: 0 failed requests for wsgipool"
        if kind == "kill":  # issue 5 allowed the killed worker's threads; retries lose none
            text = "kill: 0 failed GETs, the killed worker's retried (issue 13)"
        add(text, failed, 0, False, _int(failed))
    return out


# -- the report ------------------------------------------------------------------------


def header_lines(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    s = results["settings"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
    if "load_average_at_end" in m:
        load += " (at the end: " + ", ".join(f"{x:.2f}" for x in m["load_average_at_end"]) + ")"
    if s.get("interleave"):
        how = (
            f"median of {s['repeat']} interleaved round(s) (servers in rotation, each "
            "started afresh in each round)"
        )
    else:
        how = f"median of {s['repeat']} run(s)"
    lines = [
        f"- Command: `{m['command']}`",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"({m['usable_cpus']} usable), {m['memory_bytes'] / 1024**3:.1f} GiB, {m['kernel']}; "
        f"{m['python']}; load average at start {load}",
        f"- Load: {m['wrk']}, `-t{s['wrk_threads']} -c{s['connections']} -d{s['duration']:g}s "
        f"--timeout {s['timeout']:g}s --latency`, {s['warmup']:g} s of warm-up before each "
        f"measurement, {how}",
        f"- Every server: {s['workers']} workers x {s['threads']} threads "
        "(bench/README.md says how each server maps them)",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in m['packages'].items() if v)}",
        f"- Revision: {m['git']}",
        "",
    ]
    if results.get("interrupted"):
        lines += ["**Interrupted: this run is incomplete.**", ""]
    return lines


LEGEND = (
    "Latencies in ms; errors are wrk's socket errors (connect, read, write, timeout) and "
    "non-2xx answers; PSS is the peak proportional set size of the server's whole "
    "process tree during the measurement; CPU µs/req is the user + system CPU time the "
    "server's whole process tree (tree) and wsgipool's main process alone (main) spent "
    "during the measurement, divided by the requests served (/proc/PID/stat, "
    "bench/cputime.py); `wsgipool ÷` is wsgipool's value over the server's (req/s: above "
    "1 means wsgipool is faster, in interleaved runs the median of the per-round ratios "
    "with their min-max; PSS and CPU: below 1 means it uses less)."
)


def workload_tables(results: dict[str, Any]) -> list[str]:
    cells: list[dict[str, Any]] = results["cells"]
    lines: list[str] = []
    for workload in results["workloads"]:
        rows = []
        for name in results["servers"]:
            cell = next(
                (
                    c
                    for c in cells
                    if c["kind"] == "bench" and c["workload"] == workload and c["server"] == name
                ),
                None,
            )
            if cell is None:
                continue
            server = SERVERS[name]
            label = server.label + (" (ref.)" if server.reference else "")
            if cell["status"] != "ok":
                problem = f"**{cell['status']}**: {_escape(cell.get('reason', ''))}"
                rows.append([label, cell.get("shape", ""), problem] + [""] * 9)
                continue
            r = cell["result"]
            main = _cpu_of(cell, "main_us_per_request") if _is_wsgipool(name) else None
            rows.append(
                [
                    label,
                    cell["shape"],
                    _int(r["rps"]),
                    _ms(r["p50_ms"]),
                    _ms(r["p99_ms"]),
                    errors_text(r),
                    _mib(cell["memory"]["peak_tree_pss"]),
                    us_text(_cpu_of(cell, "tree_us_per_request")),
                    us_text(main),
                    rps_ratio_text(results, workload, name) if name != "wsgipool" else _ratio(1.0),
                    _ratio(ratio(cells, workload, name, key="pss")),
                    _ratio(ratio(cells, workload, name, key="tree_us_per_request")),
                ]
            )
        if not rows:
            continue
        lines += [f"## {workload}: {WORKLOADS[workload].summary}", ""]
        header = ["server", "processes x threads", "req/s", "p50", "p99", "errors", "PSS MiB"]
        header += ["CPU µs/req (tree)", "CPU µs/req (main)"]
        header += ["wsgipool ÷ (req/s)", "wsgipool ÷ (PSS)", "wsgipool ÷ (CPU)"]
        lines += _table(header, rows, "llrrrrrrrrrr")
        lines.append("")
    return lines


def summary_table(results: dict[str, Any]) -> list[str]:
    ok = _ok(results["cells"], "bench")
    if not ok:
        return []
    shown = [n for n in results["servers"] if any((w, n) in ok for w in results["workloads"])]
    rows = []
    for workload in results["workloads"]:
        row = [workload]
        for name in shown:
            cell = ok.get((workload, name))
            row.append(_int(cell["result"]["rps"]) if cell else "")
        rows.append(row)
    median = " (medians of interleaved rounds)" if results["settings"].get("interleave") else ""
    lines = [f"## Summary: requests per second{median}", ""]
    lines += _table(["app", *(SERVERS[n].label for n in shown)], rows)
    lines.append("")
    rows = []
    for workload in results["workloads"]:
        row = [workload]
        for name in shown:
            cell = ok.get((workload, name))
            text = us_text(_cpu_of(cell, "tree_us_per_request"))
            if _is_wsgipool(name) and cell is not None:
                text += f" (main {us_text(_cpu_of(cell, 'main_us_per_request'))}"
                user = _cpu_of(cell, "main_user_us_per_request")
                text += f", user {us_text(user)})" if user is not None else ")"
            row.append(text if cell else "")
        rows.append(row)
    lines += [f"## Summary: CPU µs per request, whole server tree{median}", ""]
    lines += _table(["app", *(SERVERS[n].label for n in shown)], rows)
    lines.append("")
    lines += ratio_table(results)
    return lines


def ratio_table(results: dict[str, Any]) -> list[str]:
    """Interleaved runs: wsgipool ÷ each peer, median (min-max) of the per-round ratios."""
    inter = results.get("interleaved") or {}
    peers = [n for n in results["servers"] if any(n in inter[w] for w in inter)]
    if not peers:
        return []
    rows = []
    for workload, entries in inter.items():
        row = [workload]
        for peer in peers:
            entry = entries.get(peer)
            if entry is None:
                row.append("")
                continue
            text = f"{_spread_text(entry['rps'])}; CPU {_spread_text(entry['tree_cpu'])}"
            if entry.get("main_cpu"):  # another wsgipool: the main processes compared too
                text += f"; main {_spread_text(entry['main_cpu'])}"
            row.append(text)
        rows.append(row)
    n = results["settings"]["repeat"]
    lines = [
        f"## wsgipool ÷ peer, median (min-max) of {n} interleaved rounds: req/s; CPU per request",
        "",
    ]
    lines += _table(["app", *(SERVERS[p].label for p in peers)], rows)
    lines.append("")
    return lines


def targets_lines(results: dict[str, Any]) -> list[str]:
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    rows = [[t["target"], t["shown"], verdict[t["met"]]] for t in results.get("targets", [])]
    if not rows:
        return []
    table = _table(["target", "measured", "met"], rows, "lrl")
    return ["## Targets of issues 5 and 13", "", *table, ""]


def problem_lines(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    problems = [c for c in results["cells"] if c["status"] != "ok"]
    if problems:
        lines += ["## Servers not reported", ""]
        for c in problems:
            lines.append(
                f"- {c['kind']} / {c['workload']} / {c['server']}: {c['status']}: "
                f"{_escape(c.get('reason', ''))} (log: `{c.get('log', '')}`)"
            )
        lines.append("")
    skipped = results.get("skipped", [])
    if skipped:
        lines += ["## Not run", "", *(f"- {line}" for line in skipped), ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole report of a run."""
    title = f"# wsgipool benchmark: {results['date']} on {results['machine']['host']}"
    lines = [title, "", *header_lines(results), LEGEND, ""]
    lines += workload_tables(results)
    lines += summary_table(results)
    lines += _scenario_tables(results)
    lines += targets_lines(results)
    lines += problem_lines(results)
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any], report_path: str | None) -> str:
    """The part of a run that bench/README.md shows: summary, scenarios, targets."""
    title = f"### {results['date']} on {results['machine']['host']}"
    lines = [title, "", *header_lines(results)]
    if report_path:
        lines += [
            f"Full report (every table, latencies, memory): [{report_path}]"
            f"({os.path.relpath(ROOT / report_path, ROOT / 'bench')})",
            "",
        ]
    lines += [
        line.replace("## ", "#### ", 1) if line.startswith("## ") else line
        for line in [*summary_table(results), *_scenario_tables(results), *targets_lines(results)]
    ]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _scenario_tables(results: dict[str, Any]) -> list[str]:
    cells = [c for c in results["cells"] if c["kind"] != "bench"]
    s = results["settings"]
    lines: list[str] = []
    titles = {
        "recycle": (
            f"Recycling under load: workers replaced every {s['max_requests']} requests "
            f"({s['scenario_workload']} workload)"
        ),
        "leak": (
            f"A leaky app ({s['leak_kib']} KiB kept per request) under a memory limit of "
            f"{s['memory_limit_mib']} MiB per worker"
        ),
        "kill": (
            f"One worker killed with SIGKILL half-way through the load "
            f"({s['scenario_workload']} workload)"
        ),
    }
    for kind, title in titles.items():
        mine = [c for c in cells if c["kind"] == kind]
        if not mine:
            continue
        rows = []
        for c in mine:
            label = SERVERS[c["server"]].label
            if c["status"] != "ok":
                rows.append(
                    [
                        label,
                        _escape(c.get("setting", "")),
                        f"**{c['status']}**: {_escape(c.get('reason', ''))}",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            r = c["result"]
            requests = int(r["requests"])
            share = f"{r['errors'] / requests:.3%}" if requests else "-"
            extra = {
                "recycle": str(c.get("new_worker_pids", "-")),
                "leak": _mib(c["memory"]["peak_process_rss"]),
                "kill": (
                    f"{c.get('killed_pid')} → "
                    + ("replaced" if c.get("replaced") else "**not replaced**")
                    + (f"; allowed ≤ {c['allowed_failures']}" if "allowed_failures" in c else "")
                ),
            }[kind]
            if c.get("after_problem"):
                extra += f"; **wrong answer after the run**: {_escape(c['after_problem'])}"
            rows.append(
                [
                    label,
                    _escape(c.get("setting", "")),
                    f"{r['duration_s']:.0f} s",
                    _int(requests),
                    errors_text(r),
                    share,
                    extra,
                    _mib(c["memory"]["peak_tree_pss"]),
                ]
            )
        extra_header = {
            "recycle": "new worker PIDs seen (≥)",
            "leak": "peak worker RSS MiB",
            "kill": "killed worker",
        }[kind]
        lines += [f"## {title}", ""]
        lines += _table(
            [
                "server",
                "setting",
                "run",
                "requests",
                "failed",
                "failed %",
                extra_header,
                "PSS MiB",
            ],
            rows,
            "llrrrrrr",
        )
        lines.append("")
    na = results.get("scenario_not_applicable", [])
    if na:
        lines += ["Servers without the setting (not run in that scenario): "]
        lines += [f"- {line}" for line in na]
        lines.append("")
    return lines
