"""`stt-engine bench --quick` end to end: 2 short clips, 1 round, the real model on both sides. A smoke test of the
benchmark's plumbing (raw library and server, language given and detected, error rates, JSON and chart); the
figures themselves come from a full run, never from the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, SHARED_AUDIO


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stt_engine", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.e2e  # `bench` starts its own server and loads the library's model: conftest cannot see that
@pytest.mark.model
def test_bench_quick(tmp_path: Path) -> None:
    proc = _bench("--quick", "--audio-dir", str(SHARED_AUDIO), "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert (tmp_path / "latest.png").stat().st_size > 10_000
    assert result["quick"] and result["rounds"] == 1 and len(result["clips"]) == 2
    assert {c.split("/")[0] for c in result["clips"]} == {"en", "ko"}
    # like with like: the library runs on the server's device and compute type
    assert (result["raw"]["device"], result["raw"]["compute_type"]) == (result["server"]["device"],
                                                                         result["server"]["compute_type"])
    runs = {(r["mode"], r["name"]) for r in result["runs"]}
    for mode in ("given", "detected"):
        assert {(mode, "raw faster-whisper (sequential)"), (mode, "server c=1"), (mode, "server c=2")} <= runs
    for row in result["runs"]:
        assert row["throughput"] > 0 and row["p95"] >= row["p50"] > 0 and row["peak_rss_mb"] > 0
        assert set(row["error"]) == {"wer", "cer"} and all(0 <= v <= 1.5 for v in row["error"].values())
    for clip in result["per_clip_error"]:
        assert clip["given:raw"] <= 0.5 and clip["given:c1"] <= 0.5  # real speech, really transcribed
    assert "server c=2" in proc.stdout


def test_bench_refuses_bad_input(tmp_path: Path) -> None:
    proc = _bench("--audio-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "no manifest.tsv" in proc.stderr
    proc = _bench("--audio-dir", str(SHARED_AUDIO), "--server-env", "NOEQUALS", timeout=120)
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr
