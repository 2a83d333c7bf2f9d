"""The `install.sh` written into every offline bundle (see `bundle.py`), kept apart so each file stays readable.

It is a Python string rather than a `.sh` data file so that it ships inside the wheel without package-data rules.
Placeholders: @REQUIREMENT@, @MODEL_NAME@, @PYTHON_VERSION@, @CUDA_LIBS@ (shell-quoted wheel requirements or
empty). Everything the script does works with no network.
"""

from __future__ import annotations

INSTALL_SH = r"""#!/usr/bin/env bash
# Install stt-engine from this offline bundle. Uses no network: pip runs with --no-index.
#
#   ./install.sh [--prefix DIR] [--python PYTHON] [--start]
#
#   --prefix DIR     where to install (default: this folder). /opt/stt-engine is a good choice on RHEL.
#   --python PYTHON  a Python @PYTHON_VERSION@ interpreter (default: python@PYTHON_VERSION@)
#   --start          start the server when done (foreground)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="$HERE"
PYTHON="${PYTHON:-python@PYTHON_VERSION@}"
START=0
REQUIREMENT="@REQUIREMENT@"
MODEL_NAME="@MODEL_NAME@"
CUDA_LIBS=(@CUDA_LIBS@)

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --start) START=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

echo "==> Checking the bundle's checksums (SHA256SUMS)"
( cd "$HERE" && sha256sum --quiet --strict -c SHA256SUMS ) || {
    echo "install.sh: the bundle is damaged (see the FAILED lines above); copy the tarball again" >&2
    exit 1
}

echo "==> Checking Python ($PYTHON)"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found. On RHEL 8: sudo dnf install python3.11 (from the RHEL media/AppStream)," >&2
    echo "            or pass --python /path/to/python@PYTHON_VERSION@" >&2
    exit 1
fi
"$PYTHON" - <<'PY' || exit 1
import sys
want = tuple(int(p) for p in "@PYTHON_VERSION@".split("."))
if sys.version_info[:2] != want:
    found = sys.version.split()[0]
    sys.exit(f"install.sh: the wheels are for Python @PYTHON_VERSION@, but {sys.executable} is {found}")
PY

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
echo "==> Creating the virtualenv $PREFIX/venv"
"$PYTHON" -m venv "$PREFIX/venv"
PIP=("$PREFIX/venv/bin/python" -m pip --disable-pip-version-check)
if ls "$HERE"/wheels/pip-*.whl >/dev/null 2>&1; then
    "${PIP[@]}" install --quiet --no-index --find-links "$HERE/wheels" --upgrade pip
fi
echo "==> Installing $REQUIREMENT (pip install --no-index)"
"${PIP[@]}" install --no-index --find-links "$HERE/wheels" "$REQUIREMENT"
LIBRARY_PATH_LINE=""
if [ "${#CUDA_LIBS[@]}" -gt 0 ]; then
    echo "==> Installing the CUDA 12 / cuDNN 9 libraries from the bundle"
    "${PIP[@]}" install --no-index --find-links "$HERE/wheels" "${CUDA_LIBS[@]}"
    LIBS="$("$PREFIX/venv/bin/python" -c 'import nvidia.cublas.lib as a, nvidia.cudnn.lib as b
print(list(a.__path__)[0] + ":" + list(b.__path__)[0])')"
    LIBRARY_PATH_LINE="export LD_LIBRARY_PATH=\"$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
fi

MODEL_PATH=""
if [ -n "$MODEL_NAME" ]; then
    if [ "$PREFIX" != "$HERE" ]; then
        echo "==> Copying the model to $PREFIX/models/$MODEL_NAME"
        mkdir -p "$PREFIX/models"
        rm -rf "$PREFIX/models/$MODEL_NAME"
        cp -R "$HERE/models/$MODEL_NAME" "$PREFIX/models/$MODEL_NAME"
    fi
    MODEL_PATH="$PREFIX/models/$MODEL_NAME"
    echo "==> Verifying the model against its manifest"
    "$PREFIX/venv/bin/stt-engine" models verify "$MODEL_PATH"
fi
mkdir -p "$PREFIX/logs" "$PREFIX/audio"

if [ ! -e "$PREFIX/.env" ]; then
    echo "==> Writing $PREFIX/.env"
    {
        echo "# Written by install.sh; see docs/deployment.md for every setting."
        [ -n "$MODEL_PATH" ] && echo "WHISPER_MODEL=$MODEL_PATH"
        echo "MODELS_DIR=$PREFIX/models"
        echo "LOG_DIR=$PREFIX/logs"
        echo "# WHISPER_DEVICE=cuda   # GPU servers (CUDA 12 + cuDNN 9 libraries must be installed)"
    } > "$PREFIX/.env"
else
    echo "==> Keeping the existing $PREFIX/.env"
fi

cat > "$PREFIX/run-server.sh" <<RUN
#!/usr/bin/env bash
# Start stt-engine with the settings in $PREFIX/.env (written by install.sh). Extra arguments go to \`serve\`.
set -euo pipefail
cd "$PREFIX"
export HF_HUB_OFFLINE=1
$LIBRARY_PATH_LINE
exec "$PREFIX/venv/bin/stt-engine" serve "\$@"
RUN
chmod 755 "$PREFIX/run-server.sh"

cat > "$PREFIX/stt-engine.service" <<UNIT
[Unit]
Description=stt-engine speech-to-text server
After=network.target

[Service]
Type=simple
User=${SUDO_USER:-$(id -un)}
WorkingDirectory=$PREFIX
ExecStart=$PREFIX/run-server.sh
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT

cat <<DONE

stt-engine is installed in $PREFIX.
  Start it:         $PREFIX/run-server.sh
  Check it:         curl http://127.0.0.1:8003/health
  As a service:     sudo cp $PREFIX/stt-engine.service /etc/systemd/system/ && sudo systemctl daemon-reload
                    sudo systemctl enable --now stt-engine
  Settings live in $PREFIX/.env (WHISPER_DEVICE=cuda for GPUs).
DONE

if [ "$START" = 1 ]; then
    exec "$PREFIX/run-server.sh"
fi
"""
