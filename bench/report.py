"""Outputs of a run: the Markdown table and the PNG timeline (results JSON: bench.reload)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCENARIO_TITLES = {
    "reload": "reload",
    "bad": "bad deploy",
    "stream": "reload + open stream",
    "recycle": "recycle (max_requests)",
}

#: Which stock server each rollover variant is compared with (bench.servers.BASELINE).
_BASELINE = {"rollover": "gunicorn", "rollover-wsgi": "gunicorn-wsgi"}


def _fmt(value: float | None, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _lat(lat: dict[str, Any]) -> str:
    return f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f}"


def _failed(failed: dict[str, Any], after: dict[str, Any]) -> str:
    if not failed["total"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in failed["by_kind"].items())
    share = after.get("fraction")
    share_text = "" if share is None else f"; {share:.0%} of requests sent after the HUP"
    return (
        f"**{failed['total']}** ({kinds}; keep-alive {failed['keepalive']}, "
        f"new connection {failed['new_connection']}{share_text})"
    )


def _roll_result(roll: dict[str, Any]) -> str:
    text = roll["result"] or "not ended"
    if roll.get("ended_after_load_stop"):
        text += " (only after the load stopped)"
    boots = roll.get("new_worker_boot_s") or []
    if boots:
        text += f"; new workers fork->READY {sum(boots) / len(boots):.2f} s avg"
    exit_ = roll.get("master_exit")
    if exit_ and "halted" not in text:
        text += f"; master exited (code {exit_['code']}) at {exit_['after_hup_s']:.1f} s"
    return text


def _stream(stream: dict[str, Any] | None) -> str:
    if not stream:
        return ""
    versions = "->".join(stream["versions"]) or "none"
    return (
        f"{stream['outcome']} after {_fmt(stream['ended_after_hup_s'], '.1f')} s "
        f"({stream['events']} events, v{versions})"
    )


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per server and scenario."""
    head = (
        "| server | scenario | requests | failed (kind) | steady p50 / p99 / max ms "
        "| reload p50 / p99 / max ms | min 0.5 s bucket / steady (steady's own min) "
        "| roll s (/ Nxboot) "
        "| HUP -> roll end s | roll result | HUP -> first new / last old answer s "
        "| longest gap s "
        "| peak RSS / steady | other load, cores: steady / reload | stream |"
    )
    lines = [head, "|" + " --- |" * 15]
    for r in results:
        if r.get("error"):
            lines.append(
                f"| {r['server']} | {SCENARIO_TITLES[r['scenario']]} | - | error: "
                f"{str(r['error']).splitlines()[0]} |" + " |" * 11
            )
            continue
        roll = r["roll"]
        tp = r["throughput"]
        rss = r["rss"]
        roll_s = (
            f"{_fmt(roll['duration_s'])} ({_fmt(roll['per_n_boot'])})"
            if roll["duration_s"] is not None
            else "not ended"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    r["server"],
                    SCENARIO_TITLES[r["scenario"]],
                    str(r["requests"]),
                    _failed(r["failed"], r["failed_after_hup"]),
                    _lat(r["latency"]["steady"]),
                    _lat(r["latency"]["reload"]),
                    f"{_fmt(tp['ratio'])} ({_fmt(tp.get('steady_min_ratio'))})",
                    roll_s,
                    _fmt(roll["ended_after_hup_s"]),
                    _roll_result(roll),
                    f"{_fmt(r['first_new_answer_s'])} / {_fmt(r['last_old_answer_s'])}",
                    _fmt(r["longest_gap_s"]),
                    _fmt(rss["ratio"]),
                    f"{_fmt(r['cpu_cores']['steady']['other'], '.1f')} / "
                    f"{_fmt(r['cpu_cores']['reload']['other'], '.1f')}",
                    _stream(r.get("stream")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _recycles(rec: dict[str, Any]) -> str:
    parts = []
    if rec["exit_at_limit"]:
        parts.append(f"{rec['exit_at_limit']} exited at the limit")
    if rec["ready_first"]:
        parts.append(f"{rec['ready_first']} replaced ready-first")
    if rec["without_replacement"]:
        parts.append(f"{rec['without_replacement']} without a replacement")
    if rec["exited_before_replacement"]:
        parts.append(f"{rec['exited_before_replacement']} exited before their replacement")
    text = f"**{rec['total']}**" + (f" ({', '.join(parts)})" if parts else "")
    if rec["asked_not_recycled"]:
        text += f"; {rec['asked_not_recycled']} asked, not yet replaced at the end"
    return text


def recycle_table(results: Sequence[dict[str, Any]]) -> str:
    """The recycle scenario: one row per server."""
    head = (
        "| server | max_requests | requests | failed (kind) | p50 / p99 / max ms "
        "| min 0.5 s bucket / median (buckets < 0.9 x median) | longest gap s "
        "| recycles (server log) | worker pids answering | other load, cores |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        limit = f"{r.get('max_requests')} + 0..{r.get('max_requests_jitter')}"
        if r.get("error"):
            lines.append(
                f"| {r['server']} | {limit} | - | error: {str(r['error']).splitlines()[0]} |"
                + " |" * 6
            )
            continue
        tp = r["throughput"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["server"],
                    limit,
                    str(r["requests"]),
                    _failed(r["failed"], {}),
                    _lat(r["latency"]["window"]),
                    f"{_fmt(tp['ratio'])} ({tp['below_0_9']} of {tp['buckets']})",
                    _fmt(r["longest_gap_s"]),
                    _recycles(r["recycles"]),
                    str(r["pids_answering"]),
                    _fmt(r["cpu_cores"]["window"]["other"], ".1f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def recycle_pairs(results: Sequence[dict[str, Any]]) -> str:
    """Each rollover variant next to its stock twin: stock -> rollover, per figure."""
    by_server = {r["server"]: r for r in results if not r.get("error")}
    head = (
        "| stock -> rollover | failed | p50 ms | p99 ms | max ms | min bucket / median | recycles |"
    )
    lines = [head, "|" + " --- |" * 7]
    for variant, stock_name in _BASELINE.items():
        roll, stock = by_server.get(variant), by_server.get(stock_name)
        if roll is None or stock is None:
            continue

        def pair(get: Any, spec: str = ".0f", a: Any = stock, b: Any = roll) -> str:
            return f"{_fmt(get(a), spec)} -> {_fmt(get(b), spec)}"

        lines.append(
            "| "
            + " | ".join(
                [
                    f"{stock_name} -> {variant}",
                    pair(lambda r: r["failed"]["total"], "d"),
                    pair(lambda r: r["latency"]["window"]["p50_ms"], ".1f"),
                    pair(lambda r: r["latency"]["window"]["p99_ms"], ".1f"),
                    pair(lambda r: r["latency"]["window"]["max_ms"]),
                    pair(lambda r: r["throughput"]["ratio"], ".2f"),
                    pair(lambda r: r["recycles"]["total"], "d"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def _mark(ok: bool | None, text: str) -> str:
    if ok is None:
        return f"n/a {text}".strip()
    return f"{'pass' if ok else '**MISS**'} {text}".strip()


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """rollover's targets, per variant and scenario, as pass / MISS with the figures."""
    head = (
        "| server | scenario | 0 failed | worst <= stock / 10 | stretch: worst <= 3 x steady p99 "
        "| min bucket >= 0.9 x steady | roll <= Nxboot + 1 s | peak RSS <= limit |"
    )
    lines = [head, "|" + " --- |" * 8]
    for t in targets:
        c = t["checks"]
        lines.append(
            "| "
            + " | ".join(
                [
                    t["server"],
                    SCENARIO_TITLES[t["scenario"]],
                    _mark(c["no_failures"]["ok"], f"({c['no_failures']['value']})"),
                    _mark(
                        c["worst_latency"]["ok"],
                        f"({_fmt(c['worst_latency']['value'], '.0f')} ms vs "
                        f"{_fmt(c['worst_latency']['limit'], '.0f')})",
                    ),
                    _mark(
                        c["worst_latency_stretch"]["ok"],
                        f"({_fmt(c['worst_latency_stretch']['value'], '.0f')} ms vs "
                        f"{_fmt(c['worst_latency_stretch']['limit'], '.0f')})",
                    ),
                    _mark(c["throughput"]["ok"], f"({_fmt(c['throughput']['value'])})"),
                    _mark(
                        c["roll_duration"]["ok"],
                        f"({_fmt(c['roll_duration']['value'])} s from HUP, "
                        f"{_fmt(c['roll_duration']['own_duration_s'])} s own, vs "
                        f"{_fmt(c['roll_duration']['limit'], '.1f')})",
                    ),
                    _mark(
                        c["rss"]["ok"],
                        f"({_fmt(c['rss']['value'])} vs {_fmt(c['rss']['limit'])})",
                    ),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def markdown(
    meta: dict[str, Any], results: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]
) -> str:
    cfg = meta["config"]
    machine = meta["machine"]
    recycled = [r for r in results if r["scenario"] == "recycle"]
    results = [r for r in results if r["scenario"] != "recycle"]
    parts = [
        f"# Reload benchmark, {meta['started']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GiB, "
        f"{machine['os']}; Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        f"App: {cfg['workers']} workers, {cfg['boot']:g} s import-time boot "
        f"({'CPU-bound' if cfg['cpu_boot'] else 'sleeping'}); load: {cfg['clients']} "
        f"closed-loop aiohttp clients ({cfg['keepalive_clients']} keep-alive, "
        f"{cfg['clients'] - cfg['keepalive_clients']} new connection per request), "
        f"{cfg['think'] * 1000:g} ms think time, {cfg['timeout']:g} s request timeout; "
        + (
            f"HUP {cfg['hup_at']:g} s into the load ({cfg['warmup']:g} s warm-up excluded); "
            if results
            else f"{cfg['warmup']:g} s warm-up excluded; "
        )
        + f"graceful timeout {cfg['graceful_timeout']:g} s for every server.",
        "",
        f"Command: `{meta['command']}` ({meta.get('elapsed_s', 0):g} s; load average "
        f"{machine['loadavg_at_start'][0]:g} at the start, "
        f"{machine.get('loadavg_at_end', ['?'])[0]} at the end).",
        "",
    ]
    if results:
        parts += [
            'Latencies cover every attempt (answered or failed); "reload" figures cover the '
            "requests in flight from the HUP to the end of the load (roll end + "
            f"{cfg['tail']:g} s at least). Roll: rollover from its status file (finished - "
            "started); stock gunicorn and uvicorn until the last old worker was gone (or the "
            "master halted / the restart aborted).",
            "",
            results_table(results),
            "",
        ]
    if recycled:
        parts += [
            "## Recycling at max_requests (no HUP)",
            "",
            f"Every server runs with `--max-requests {cfg['max_requests']} "
            f"--max-requests-jitter {cfg['max_requests_jitter']}` (uvicorn: "
            "`--limit-max-requests`, `--limit-max-requests-jitter`) under the same load for "
            f"{cfg['recycle_duration']:g} s after the warm-up; latencies cover every attempt "
            "started in that window, buckets are whole 0.5 s buckets of it, compared with "
            "their median. Recycles: counted in the server's log over the whole run.",
            "",
            recycle_table(recycled),
            "",
        ]
        pairs = recycle_pairs(recycled)
        if pairs:
            parts += [pairs, ""]
    if targets:
        parts += ["## rollover against its targets", "", targets_table(targets), ""]
    if meta.get("png"):
        parts += [f"![timeline]({Path(meta['png']).name})", ""]
    return "\n".join(parts)


def plot(
    path: Path,
    runs: Sequence[dict[str, Any]],
    servers: Sequence[str],
    scenarios: Sequence[str],
    title: str,
) -> None:
    """The timeline PNG: one row of panels per server, one column per scenario.

    `runs` items carry "result" (the JSON dict) and "records" (the per-request timeline
    as (start, end, ok) relative to the HUP).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(servers), len(scenarios)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(5.6 * cols, 11), 2.7 * rows + 1.2),
        squeeze=False,
        sharex="col",  # the recycle column's time axis is its own
    )
    by_key = {(run["result"]["server"], run["result"]["scenario"]): run for run in runs}
    tp_max = 1.0
    lat_max = 0.01
    for item in runs:
        series = item["result"].get("series")
        if series and series["ok_per_s"]:
            tp_max = max(tp_max, *series["ok_per_s"])
        lat_max = max([lat_max, *(end - start for start, end, _ in item["records"])])
    for i, server in enumerate(servers):
        for j, scenario in enumerate(scenarios):
            ax = axes[i][j]
            run = by_key.get((server, scenario))
            ax.set_title(f"{server} · {SCENARIO_TITLES[scenario]}", fontsize=9, loc="left")
            if run is None or run["result"].get("error"):
                ax.text(
                    0.5,
                    0.5,
                    "not run" if run is None else "error",
                    ha="center",
                    transform=ax.transAxes,
                )
                continue
            _panel(ax, run, tp_max, lat_max)
            if j == 0:
                ax.set_ylabel("answered req/s", fontsize=8)
            if i == rows - 1:
                ax.set_xlabel(
                    "seconds since the warm-up" if scenario == "recycle" else "seconds since HUP",
                    fontsize=8,
                )
    fig.suptitle(title, fontsize=10)
    handles: list[Any] = [
        matplotlib.lines.Line2D([], [], color="tab:blue", label="throughput (0.5 s buckets)"),
        matplotlib.lines.Line2D(
            [], [], color="tab:orange", marker=".", ls="", label="request latency (right axis, log)"
        ),
        matplotlib.lines.Line2D([], [], color="red", marker="x", ls="", label="failed request"),
    ]
    if any(s != "recycle" for s in scenarios):
        handles += [
            matplotlib.lines.Line2D([], [], color="black", ls="-", label="HUP"),
            matplotlib.patches.Patch(color="tab:green", alpha=0.15, label="roll (HUP -> end)"),
            matplotlib.lines.Line2D(
                [], [], color="tab:purple", ls=":", label="first new-code answer"
            ),
        ]
    if "recycle" in scenarios:
        handles.append(
            matplotlib.lines.Line2D(
                [], [], color="grey", ls="--", label="recycle: a worker's last answer"
            )
        )
    fig.legend(
        handles=handles, loc="lower center", ncol=3 if cols == 1 else 6, fontsize=8, frameon=False
    )
    legend_h = (0.6 if cols == 1 else 0.35) / (2.7 * rows + 1.2)
    fig.tight_layout(rect=(0, legend_h, 1, 1 - 0.35 / (2.7 * rows + 1.2)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def series_bucket(result: dict[str, Any]) -> float:
    return float(result["throughput"]["bucket_s"])


def _panel(ax: Any, run: dict[str, Any], tp_max: float, lat_max: float) -> None:
    result = run["result"]
    series = result["series"]
    if series["t"]:
        xs = [*series["t"], series["t"][-1] + series_bucket(result)]
        ys = [*series["ok_per_s"], series["ok_per_s"][-1]]
        ax.step(xs, ys, where="post", color="tab:blue", lw=1.2)
    ax.set_ylim(0, tp_max * 1.15)
    ax.tick_params(labelsize=7)
    recycling = result["scenario"] == "recycle"
    if not recycling:  # the recycle scenario has no HUP, no roll, no new code
        ax.axvline(0, color="black", lw=1)
        roll = result["roll"]
        if roll["ended_after_hup_s"] is not None:
            ax.axvspan(0, roll["ended_after_hup_s"], color="tab:green", alpha=0.15)
        if result["first_new_answer_s"] is not None:
            ax.axvline(result["first_new_answer_s"], color="tab:purple", ls=":", lw=1.2)
    else:
        for t in result.get("worker_last_answers_s", []):
            ax.axvline(t, color="grey", ls="--", lw=0.8)
    lat = ax.twinx()
    ok = [(end, end - start) for start, end, good in run["records"] if good]
    bad = [(end, end - start) for start, end, good in run["records"] if not good]
    if ok:
        lat.scatter(
            [x for x, _ in ok],
            [y * 1000 for _, y in ok],
            s=2,
            color="tab:orange",
            alpha=0.35,
            linewidths=0,
            rasterized=True,
        )
    if bad:
        lat.scatter(
            [x for x, _ in bad],
            [max(y * 1000, 0.3) for _, y in bad],
            s=12,
            color="red",
            marker="x",
            linewidths=0.8,
        )
    lat.set_yscale("log")
    lat.set_ylim(0.3, lat_max * 1000 * 2)
    lat.tick_params(labelsize=7)
    lat.set_ylabel("latency ms", fontsize=7)
    failed = result["failed"]["total"]
    window = "window" if recycling else "reload"
    text = (
        f"failed {failed}, worst {result['latency'][window]['max_ms']:.0f} ms, "
        f"min bucket {_fmt(result['throughput']['ratio'])}"
    )
    if recycling:
        text += f", recycles {result['recycles']['total']}"
    ax.text(
        0.99,
        0.04,
        text,
        transform=ax.transAxes,
        ha="right",
        fontsize=7,
        color="red" if failed else "black",
        bbox={"facecolor": "white", "alpha": 0.7, "lw": 0},
    )
