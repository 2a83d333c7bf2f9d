"""Turning runs into the report: rows with accuracy beside speed, the ratios held to targets, the table, the chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from stt_engine.benchmark.clips import Clip
from stt_engine.benchmark.measure import MODES, Run

# The server's throughput at 4 and 8 clients against the ceiling's, and one request alone against the library.
CEILING_TARGET = 0.95
CEILING_TARGET_CLIENTS = (4, 8)
ALONE_TARGET = 1.05


def accuracy(run: Run, clips: list[Clip]) -> dict[str, float]:
    """Mean error rate per metric ("wer", "cer") over the clips this run transcribed."""
    by_metric: dict[str, list[float]] = {}
    for clip in clips:
        if clip.name in run.texts:
            by_metric.setdefault(clip.metric, []).append(clip.error_rate(run.texts[clip.name]))
    return {name: round(statistics.fmean(rates), 4) for name, rates in sorted(by_metric.items())}


def run_row(run: Run, library: Run, ceiling: Run | None, clips: list[Clip],
            vs_ceiling_each: list[float] | None = None) -> dict[str, Any]:
    """One table row; throughput ratios against the library and the ceiling of the same mode, same run
    (`vs_ceiling_each`: the ratio to the ceiling in each repeat, to show their spread)."""
    return {
        "mode": run.mode, "kind": run.kind, "name": run.name, "concurrency": run.concurrency,
        "requests": run.requests, "audio_seconds": round(run.audio_seconds, 2),
        "wall_seconds": round(run.wall_seconds, 3), "throughput": round(run.throughput, 3),
        "ratio_vs_raw": round(run.throughput / library.throughput, 3),
        "ratio_vs_ceiling": round(run.throughput / ceiling.throughput, 3) if ceiling else None,
        "ratio_vs_ceiling_each": [round(v, 3) for v in vs_ceiling_each] if ceiling and vs_ceiling_each else None,
        "p50": round(statistics.median(run.latencies), 3), "p95": round(run.pct(0.95), 3),
        "p50_vs_raw": round(statistics.median(run.latencies) / statistics.median(library.latencies), 3),
        "peak_rss_mb": round(run.peak_rss_mb or 0.0, 1), "error": accuracy(run, clips),
    }


def targets(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode: what side-by-side decoding can gain (ceiling / library), the server against the ceiling at each
    concurrency above 1 (target >= 0.95 at 4 and 8 clients), and one request alone against the library in time
    (server c=1 wall / library wall over the same requests, and the median latency ratio; target <= 1.05)."""
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        of_mode = [r for r in rows if r["mode"] == mode]
        ceiling = next((r for r in of_mode if r["kind"] == "ceiling"), None)
        library = next((r for r in of_mode if r["kind"] == "library"), None)
        servers = {r["concurrency"]: r for r in of_mode if r["kind"] == "server"}
        if library is None:
            continue
        entry: dict[str, Any] = {}
        if ceiling:
            entry["ceiling_vs_library"] = ceiling["ratio_vs_raw"]
            vs = {str(c): r["ratio_vs_ceiling"] for c, r in sorted(servers.items()) if c > 1}
            held = [servers[c]["ratio_vs_ceiling"] for c in CEILING_TARGET_CLIENTS if c in servers]
            entry["server_vs_ceiling"] = vs
            entry["server_vs_ceiling_each"] = {str(c): r.get("ratio_vs_ceiling_each") or [r["ratio_vs_ceiling"]]
                                               for c, r in sorted(servers.items()) if c > 1}
            entry["server_vs_ceiling_target"] = CEILING_TARGET
            entry["server_vs_ceiling_met"] = all(v >= CEILING_TARGET for v in held) if held else None
        if 1 in servers:
            alone = servers[1]["wall_seconds"] / library["wall_seconds"]
            entry["alone_vs_library"] = round(alone, 3)
            entry["alone_p50_vs_library"] = servers[1]["p50_vs_raw"]
            entry["alone_vs_library_target"] = ALONE_TARGET
            entry["alone_vs_library_met"] = alone <= ALONE_TARGET
        out[mode] = entry
    return out


def per_clip(runs: list[Run], clips: list[Clip]) -> list[dict[str, Any]]:
    """Every clip's error rate in every run, keyed "<mode>:raw", "<mode>:ceiling", "<mode>:c<clients>"."""
    rows = []
    for clip in clips:
        row: dict[str, Any] = {"clip": clip.name, "language": clip.language, "metric": clip.metric}
        for run in runs:
            if clip.name in run.texts:
                label = {"library": "raw", "ceiling": "ceiling"}.get(run.kind, f"c{run.concurrency}")
                row[f"{run.mode}:{label}"] = round(clip.error_rate(run.texts[clip.name]), 4)
        rows.append(row)
    return rows


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Throughput and p95 latency against concurrency; the library and the ceiling as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, color in zip(MODES, ("tab:blue", "tab:orange")):
        server = [r for r in rows if r["mode"] == mode and r["kind"] == "server"]
        library = next((r for r in rows if r["mode"] == mode and r["kind"] == "library"), None)
        ceiling = next((r for r in rows if r["mode"] == mode and r["kind"] == "ceiling"), None)
        if not server or library is None:
            continue
        xs = [r["concurrency"] for r in server]
        ax1.plot(xs, [r["throughput"] for r in server], "o-", color=color, label=f"stt-engine, language {mode}")
        ax1.axhline(library["throughput"], color=color, linestyle="--", label=f"library, language {mode}")
        if ceiling:
            ax1.axhline(ceiling["throughput"], color=color, linestyle=":",
                        label=f"ceiling ({ceiling['concurrency']} x 1-thread), language {mode}")
        ax2.plot(xs, [r["p95"] for r in server], "o-", color=color, label=f"stt-engine, language {mode}")
        ax2.axhline(library["p95"], color=color, linestyle="--", label=f"library, language {mode}")
    ticks = sorted({r["concurrency"] for r in rows if r["kind"] == "server"})
    ax1.set_xticks(ticks)
    ax2.set_xticks(ticks)
    ax1.set(xlabel="concurrent requests", ylabel="audio s / wall s", title="Throughput", ylim=(0, None))
    ax2.set(xlabel="concurrent requests", ylabel="seconds", title="p95 latency", ylim=(0, None))
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ratio(value: float | None) -> str:
    return f"{value:6.2f}x" if value is not None else "      -"


def print_tables(rows: list[dict[str, Any]], goals: dict[str, dict[str, Any]], long_rows: list[dict[str, Any]],
                 fairness: dict[str, Any] | None) -> None:
    print(f"\n{'language':9} {'run':34} {'thr s/s':>8} {'vs raw':>7} {'vs ceil':>7} {'p50':>6} {'p50/raw':>7} "
          f"{'p95':>6} {'RSS MB':>7}  error")
    for r in rows:
        errors = " ".join(f"{k.upper()} {v:.3f}" for k, v in r["error"].items())
        print(f"{r['mode']:9} {r['name']:34} {r['throughput']:8.2f} {_ratio(r['ratio_vs_raw'])} "
              f"{_ratio(r['ratio_vs_ceiling'])} {r['p50']:6.2f} {_ratio(r['p50_vs_raw'])} {r['p95']:6.2f} "
              f"{r['peak_rss_mb']:7.0f}  {errors}")
    for mode, goal in goals.items():
        parts = []
        if "ceiling_vs_library" in goal:
            vs = ", ".join(f"{c} clients {v:.2f}" + (f" (repeats {'/'.join(f'{e:.2f}' for e in each)})"
                                                     if len(each := goal["server_vs_ceiling_each"][c]) > 1 else "")
                           for c, v in goal["server_vs_ceiling"].items())
            parts.append(f"ceiling {goal['ceiling_vs_library']:.2f}x the library; server / ceiling: {vs or '-'} "
                         f"(target >= {CEILING_TARGET} at {' and '.join(map(str, CEILING_TARGET_CLIENTS))})")
        if "alone_vs_library" in goal:
            parts.append(f"one request alone {goal['alone_vs_library']:.2f}x the library's time (p50 "
                         f"{goal['alone_p50_vs_library']:.2f}x; target <= {ALONE_TARGET})")
        print(f"language {mode}: " + "; ".join(parts))
    if long_rows:
        print(f"\n{'long clip, alone, language given':46} {'raw seq':>14} {'raw batched':>14} {'server':>14}")
        for r in long_rows:
            m = r["metric"].upper()
            print(f"{r['clip']:46} {r['raw_sequential_s']:6.2f}s {m} {r['raw_sequential_error']:.3f} "
                  f"{r['raw_batched_s']:6.2f}s {m} {r['raw_batched_error']:.3f} "
                  f"{r['server_s']:6.2f}s {m} {r['server_error']:.3f}")
    if fairness:
        print(f"\nfairness: {fairness['short_clip']} alone {fairness['alone_s']:.2f} s, while {fairness['long_clip']} "
              f"is transcribed {fairness['during_long_s']:.2f} s ({fairness['ratio']:.2f}x)")
