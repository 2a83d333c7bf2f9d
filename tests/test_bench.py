"""`stt-engine bench --quick` end to end: the shortest English clip twice (2 rounds, so two clients
and both ceiling processes really run at once), a real model (Whisper tiny.en, about five times cheaper to run than
base) on every side. A smoke test of the benchmark's plumbing (raw library, the ceiling's
one-thread library processes and the server, language given and detected, error rates, the target ratios, JSON and
chart), each step once; the figures themselves come from a full run, never from the test suite. How a reduced run
picks clips of several languages is checked below without a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, SHARED_AUDIO, tiny_en_model


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stt_engine", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.e2e  # `bench` starts its own server and loads the library's model: conftest cannot see that
@pytest.mark.model
def test_bench_quick(tmp_path: Path) -> None:
    model = tiny_en_model()
    proc = _bench("--quick", "--languages", "en", "--clips", "1", "--rounds", "2", "--server-env", f"WHISPER_MODEL={model}",
                  "--audio-dir", str(SHARED_AUDIO), "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert (tmp_path / "latest.png").stat().st_size > 10_000
    assert result["quick"] and result["rounds"] == 2 and len(result["clips"]) == 1
    assert result["clips"][0].startswith("en/") and result["server"]["env"]["WHISPER_MODEL"] == str(model)
    # like with like: the library runs on the server's device and compute type
    assert (result["raw"]["device"], result["raw"]["compute_type"]) == (result["server"]["device"],
                                                                         result["server"]["compute_type"])
    runs = {(r["mode"], r["kind"], r["name"]) for r in result["runs"]}
    processes = result["server"]["workers"]
    # on CUDA both the library and the ceiling use BatchedInferencePipeline; on a CPU, WhisperModel.transcribe
    pipeline = result["raw"]["short_clips_pipeline"]
    assert pipeline == ("BatchedInferencePipeline" if result["raw"]["device"] == "cuda" else "WhisperModel.transcribe")
    assert result["ceiling"] == {"processes": processes, "threads_per_process": 1, "pipeline": pipeline}
    ceiling = f"ceiling: {processes} x 1-thread library"
    for mode in ("given", "detected"):
        assert {(mode, "ceiling", ceiling), (mode, "server", "server c=1"), (mode, "server", "server c=2")} <= runs
        assert sum(r["mode"] == mode and r["kind"] == "library" for r in result["runs"]) == 1
        goals = result["targets"][mode]
        assert goals["ceiling_vs_library"] > 0 and goals["server_vs_ceiling"].keys() == {"2"}
        assert goals["server_vs_ceiling_met"] is None  # held at 4 and 8 clients, which --quick does not run
        assert goals["alone_vs_library"] > 0 and goals["alone_vs_library_target"] == 1.05
    for row in result["runs"]:
        assert row["throughput"] > 0 and row["p95"] >= row["p50"] > 0 and row["peak_rss_mb"] > 0
        # English clips: WER only (a row has one mean per metric its clips use; the metric per language is textnorm's)
        assert set(row["error"]) == {"wer"} and all(0 <= v <= 1.5 for v in row["error"].values())
    for clip in result["per_clip_error"]:
        # real speech, really transcribed, by the library, the ceiling's processes and the server
        assert clip["given:raw"] <= 0.5 and clip["given:ceiling"] <= 0.5 and clip["given:c1"] <= 0.5
    assert "server c=2" in proc.stdout and "server / ceiling" in proc.stdout


def test_bench_refuses_bad_input(tmp_path: Path) -> None:
    proc = _bench("--audio-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "no manifest.tsv" in proc.stderr
    proc = _bench("--audio-dir", str(SHARED_AUDIO), "--server-env", "NOEQUALS", timeout=120)
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


def test_manifest_reader_and_reduced_clip_choice() -> None:
    """The one manifest reader: every row, in order; a reduced run still alternates the languages."""
    from stt_engine.benchmark.clips import pick_short, read_manifest

    rows = read_manifest(SHARED_AUDIO)
    assert rows and rows[0].path == SHARED_AUDIO / rows[0].file
    scored = [c for c in rows if c.scored]
    assert scored and all(c.references and c.path.is_file() for c in scored)
    picked = pick_short(scored, ["en", "ko"], 2.0, 12.0, 3)
    assert len(picked) <= 3 and all(2.0 <= c.duration <= 12.0 for c in picked)
    if {c.language for c in scored if 2.0 <= c.duration <= 12.0} >= {"en", "ko"}:
        assert [c.language for c in picked[:2]] == ["en", "ko"]


def test_targets_hold_the_server_to_the_ceiling_and_the_library() -> None:
    """Pure arithmetic on rows: server / ceiling at 4 and 8 clients (>= 0.95), one request alone / library (<= 1.05)."""
    from stt_engine.benchmark.report import targets

    def row(kind: str, concurrency: int, wall: float, vs_ceiling: float | None = None) -> dict[str, object]:
        return {"mode": "given", "kind": kind, "concurrency": concurrency, "wall_seconds": wall,
                "ratio_vs_raw": 20.0 / wall, "ratio_vs_ceiling": vs_ceiling, "p50_vs_raw": 1.02}

    rows = [row("library", 1, 20.0), row("ceiling", 2, 14.8, 1.0), row("server", 1, 20.6, 0.72),
            row("server", 4, 15.2, 0.97), row("server", 8, 15.9, 0.93)]
    goal = targets(rows)["given"]
    assert goal["ceiling_vs_library"] == rows[1]["ratio_vs_raw"]
    assert goal["server_vs_ceiling"] == {"4": 0.97, "8": 0.93} and goal["server_vs_ceiling_met"] is False
    assert goal["alone_vs_library"] == 1.03 and goal["alone_vs_library_met"] is True
    assert "detected" not in targets(rows)
