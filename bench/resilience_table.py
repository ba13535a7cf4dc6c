"""Render the README's reliability table from bench/results/resilience.json (what `make resilience` writes).

`python bench/resilience_table.py [JSON]` prints the Markdown table; tests/bench/test_harness.py checks that the
README holds exactly this output, so the table is never typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "resilience.json"


def _n(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,}"


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """One (attack, result) row per figure the suite recorded, in a fixed order."""
    out: list[tuple[str, str]] = []
    if fuzz := r.get("fuzz"):
        out.append(("OpenAPI fuzzing (schemathesis, every route of `/_openapi.json`) + hypothesis bodies for PUT, "
                    "`_update` of a live endpoint and `_start` of an installed model + hostile values (1e308, 2^64+1, "
                    "5000-deep JSON, invalid UTF-8, NUL, `..`, `%2F`, model ids like `../../etc/passwd`, a 33 MB body)",
                    f"{_n(fuzz['schemathesis_cases'])} + {_n(fuzz['hypothesis_bodies'])} + "
                    f"{_n(fuzz['hostile_requests'])} requests, **{_n(fuzz['server_errors'])} 5xx**, every refusal an "
                    "Elasticsearch error body, nothing created"))
    if race := r.get("state_machine"):
        out.append(("random interleavings of PUT, DELETE, `_update`, `_start` and `_stop` on a few ids (hypothesis "
                    "stateful testing), plus DELETE-while-PUT-waits and PUT-while-DELETE-drains races",
                    f"{_n(race['requests'])} requests, **{_n(race['5xx'])} 5xx**, **{_n(race['zombies'])} zombies** "
                    "(a listed endpoint that cannot serve, or a worker without a deployment)"))
    if adm := r.get("admission"):
        out.append(("`num_allocations` of " + " and ".join(_n(n) for n in adm["refused"]) + " on 2 cores; a restore "
                    "that cannot start one deployment",
                    "refused up front with an Elasticsearch error saying what fits; the restore marks that deployment "
                    "failed and " + ("keeps serving the rest" if adm["restore_failed_kept_serving"] else "stops")))
    if over := r.get("overload"):
        ten = over["10x"]
        out.append(("10× the saturating load for 8 s (queue capacity 64 inputs)",
                    f"{_n(ten['rejected'])} requests refused with `429` + `Retry-After`, {_n(ten['ok'])} answered, "
                    f"**{_n(ten['bad_answers'])} wrong answers**; memory +{over['rss_mb_peak'] - over['rss_mb_before']:.0f}"
                    f" MB at peak; throughput right after = {over['throughput_after_vs_before']:.2f}× before"))
    if disc := r.get("disconnect"):
        out.append(("a client that hangs up while its request waits",
                    f"the worker drops it before the model runs ({_n(disc['inputs_run'] - 32)} of its inputs "
                    "computed)"))
    if "rss_mb_before_large_burst" in r:
        burst = ", ".join(r["large_burst"]["requests"])
        out.append((f"a burst of huge inputs ({burst}) on one worker (`bench/large_inputs.py`)",
                    f"worker RSS {_n(r['rss_mb_before_large_burst'])} MB before, {_n(r['rss_mb_peak_large_burst'])} "
                    f"MB at peak, {_n(r['rss_mb_after_large_burst'])} MB after"))
    if ab := r.get("abandoned_large"):
        out.append(("150 inputs × 150k characters with `?timeout=5s`, then a small request",
                    f"the large one answers `{ab['large_status']}` after {ab['large_s']} s and is dropped inside the "
                    f"worker; the next small request is answered in {ab['small_after_s']} s"))
    if kill := r.get("worker_killed_under_load"):
        out.append(("SIGKILL one of two workers under 4 concurrent clients",
                    f"{_n(kill['requests'])} requests, **{_n(kill['failed'])} failed**; replaced and fully "
                    f"allocated again in {kill['seconds_to_fully_allocated']} s"))
    if server := r.get("server_killed"):
        out.append(("SIGKILL `infernetes serve`, start it again",
                    f"its workers and zygotes exit on their own; {server['endpoints_back']} of {server['endpoints']} "
                    f"endpoints back, all serving in {server['seconds_to_serving_again']} s"))
    if dl := r.get("download_killed"):
        out.append(("SIGKILL a model download at 10 MB",
                    f"nothing half-written in the store; the next run resumes at byte {_n(dl['resumed_from_byte'])} "
                    "and verifies"))
    if sq := r.get("sqlite_kill9"):
        out.append((f"SIGKILL the SQLite writer {sq['kills']} times at random moments",
                    f"integrity check {sq['integrity']} every time, no committed change lost"))
    if ro := r.get("read_only_data_dir"):
        out.append(("data dir made read-only while serving",
                    f"PUT answers `{ro['put_status']}` with the reason (logged, deployment failed, not 'starting' "
                    f"forever); serving again {ro['recovered_after_writable_s']} s after it is writable"))
    if sec := r.get("security"):
        out.append(("no API key / a wrong secret / wrong privilege",
                    f"`{sec['unauthenticated_status']}` / `{sec.get('wrong_secret_status', 401)}` / "
                    f"`{sec['wrong_privilege_status']}` with Elasticsearch bodies; no secret in any log, none stored "
                    "in clear"))
        out.append(("a pickle put in a model folder by hand (a booby trap, and a state dict torch itself would load)",
                    "never unpickled: the worker refuses to load it"))
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["| attack | result |", "|---|---|"]
    lines += [f"| {attack} | {result} |" for attack, result in rows(report)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    print(markdown(json.loads(path.read_text())), end="")
