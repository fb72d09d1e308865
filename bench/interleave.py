"""Interleaved repeats: fold the rounds of ``--repeat N --interleave`` into medians.

With ``--interleave`` every workload is measured in N rounds of every server in
rotation (A B C A B C ...), each server started afresh in each round, so a slow
minute of a shared machine weighs on every server of that round rather than on
one.  `fold` moves the round cells to ``results["rounds"]`` and puts in
``results["cells"]``, per workload and server, one cell of the median: req/s and
CPU per request are medians over the rounds that succeeded, errors the sum over
them, latencies and PSS those of the median round (by req/s).  It also writes
``results["interleaved"]``: per workload and peer, wsgipool's ratio to the peer
in every round where both were measured, with the median and the spread
(min-max): req/s (above 1: wsgipool faster) and whole-tree CPU per request
(below 1: wsgipool cheaper).
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

ERROR_KEYS = (
    "errors",
    "errors_connect",
    "errors_read",
    "errors_write",
    "errors_timeout",
    "errors_status",
    "wrong_bodies",
)


def _cpu(cell: dict[str, Any], key: str) -> float | None:
    value = (cell.get("cpu") or {}).get(key)
    return float(value) if value is not None else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "rounds": [round(v, 4) for v in values],
    }


def median_cell(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell standing for the rounds of one server and workload."""
    ok = [c for c in rounds if c["status"] == "ok"]
    summary = [
        {
            "round": c.get("round"),
            "status": c["status"],
            "rps": c["result"]["rps"] if c["status"] == "ok" else None,
            "tree_us_per_request": _cpu(c, "tree_us_per_request"),
            "main_us_per_request": _cpu(c, "main_us_per_request"),
            "errors": c["result"]["errors"] if c["status"] == "ok" else None,
        }
        for c in rounds
    ]
    if not ok:
        cell = copy.deepcopy(rounds[-1])
        cell.pop("round", None)
        cell["rounds"] = summary
        return cell
    by_rps = sorted(ok, key=lambda c: c["result"]["rps"])
    cell = copy.deepcopy(by_rps[(len(by_rps) - 1) // 2])
    cell.pop("round", None)
    result = cell["result"]
    result["rps"] = round(statistics.median(c["result"]["rps"] for c in ok), 1)
    for key in ERROR_KEYS:
        result[key] = sum(int(c["result"].get(key) or 0) for c in ok)
    statuses: dict[str, int] = {}
    for c in ok:
        for code, n in (c["result"].get("statuses") or {}).items():
            statuses[code] = statuses.get(code, 0) + int(n)
    result["statuses"] = statuses
    result["requests_all_rounds"] = sum(int(c["result"]["requests"]) for c in ok)
    cell["cpu"] = {
        "tree_us_per_request": _median([_cpu(c, "tree_us_per_request") for c in ok]),
        "main_us_per_request": _median([_cpu(c, "main_us_per_request") for c in ok]),
        "main_user_us_per_request": _median([_cpu(c, "main_user_us_per_request") for c in ok]),
        "median_of": len(ok),
    }
    cell["rounds"] = summary
    cell["rounds_ok"] = len(ok)
    cell["rounds_failed"] = len(rounds) - len(ok)
    return cell


def ratios(
    rounds: list[dict[str, Any]], workload: str, peer: str, mine: str = "wsgipool"
) -> dict[str, Any]:
    """wsgipool ÷ peer, round by round: req/s and whole-tree CPU µs per request."""
    by_round: dict[Any, dict[str, dict[str, Any]]] = {}
    for c in rounds:
        if c["workload"] == workload and c["status"] == "ok":
            by_round.setdefault(c.get("round"), {})[c["server"]] = c
    rps: list[float] = []
    tree: list[float] = []
    main: list[float] = []
    for cells in by_round.values():
        a, b = cells.get(mine), cells.get(peer)
        if a is None or b is None:
            continue
        if b["result"]["rps"]:
            rps.append(a["result"]["rps"] / b["result"]["rps"])
        ta, tb = _cpu(a, "tree_us_per_request"), _cpu(b, "tree_us_per_request")
        if ta is not None and tb:
            tree.append(ta / tb)
        if peer.startswith(("wsgipool", "forward")):  # its frontend too (--baseline)
            ma, mb = _cpu(a, "main_us_per_request"), _cpu(b, "main_us_per_request")
            if ma is not None and mb:
                main.append(ma / mb)
    out = {"rps": spread(rps), "tree_cpu": spread(tree)}
    if main:
        out["main_cpu"] = spread(main)
    return out


def fold(results: dict[str, Any]) -> None:
    """Replace the round cells of `results` by median cells; add `results["interleaved"]`."""
    rounds = [c for c in results["cells"] if c["kind"] == "bench" and "round" in c]
    if not rounds:
        return
    others = [c for c in results["cells"] if not (c["kind"] == "bench" and "round" in c)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in rounds:
        groups.setdefault((c["workload"], c["server"]), []).append(c)
    medians = [median_cell(cells) for cells in groups.values()]
    summary: dict[str, Any] = {}
    for workload in results["workloads"]:
        servers = {c["server"] for c in rounds if c["workload"] == workload}
        if "wsgipool" not in servers:
            continue
        summary[workload] = {
            peer: ratios(rounds, workload, peer)
            for peer in results["servers"]
            if peer in servers and peer != "wsgipool"
        }
    results["rounds"] = rounds
    results["cells"] = medians + others
    results["interleaved"] = summary
