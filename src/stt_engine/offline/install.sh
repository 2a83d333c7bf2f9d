#!/usr/bin/env bash
# Install stt-engine from this offline bundle. Uses no network: pip runs with --no-index.
#
#   ./install.sh [--prefix DIR] [--python PYTHON] [--start]
#
#   --prefix DIR     where to install (default: this folder). /opt/stt-engine is a good choice on RHEL.
#   --python PYTHON  a Python interpreter of the version the wheels were built for (default: python3.11)
#   --start          start the server when done (foreground)
#
# What to install (requirement, model folder, Python version, CUDA wheels) comes from bundle.env, written by
# `stt-engine bundle` beside this script and covered by SHA256SUMS.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="$HERE"
PYTHON="${PYTHON:-}"
START=0

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
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

# Sets REQUIREMENT, MODEL_NAME, PYTHON_VERSION and CUDA_LIBS (space-separated requirements, or empty).
# shellcheck source=/dev/null
. "$HERE/bundle.env"
PYTHON="${PYTHON:-python$PYTHON_VERSION}"
read -r -a CUDA_REQUIREMENTS <<< "$CUDA_LIBS"

echo "==> Checking Python ($PYTHON)"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found. On RHEL 8: sudo dnf install python$PYTHON_VERSION (from the RHEL media/AppStream)," >&2
    echo "            or pass --python /path/to/python$PYTHON_VERSION" >&2
    exit 1
fi
"$PYTHON" - "$PYTHON_VERSION" <<'PY' || exit 1
import sys
want = tuple(int(p) for p in sys.argv[1].split("."))
if sys.version_info[:2] != want:
    found = sys.version.split()[0]
    sys.exit(f"install.sh: the wheels are for Python {sys.argv[1]}, but {sys.executable} is {found}")
PY

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
echo "==> Creating the virtualenv $PREFIX/venv"
"$PYTHON" -m venv "$PREFIX/venv"
PIP=("$PREFIX/venv/bin/python" -m pip --disable-pip-version-check)
if compgen -G "$HERE/wheels/pip-*.whl" >/dev/null; then
    "${PIP[@]}" install --quiet --no-index --find-links "$HERE/wheels" --upgrade pip
fi
echo "==> Installing $REQUIREMENT (pip install --no-index)"
"${PIP[@]}" install --no-index --find-links "$HERE/wheels" "$REQUIREMENT"
LIBRARY_PATH_LINE=""
if [ "${#CUDA_REQUIREMENTS[@]}" -gt 0 ]; then
    echo "==> Installing the CUDA 12 / cuDNN 9 libraries from the bundle"
    "${PIP[@]}" install --no-index --find-links "$HERE/wheels" "${CUDA_REQUIREMENTS[@]}"
    LIBS="$("$PREFIX/venv/bin/python" -c 'import nvidia.cublas.lib as a, nvidia.cudnn.lib as b
print(list(a.__path__)[0] + ":" + list(b.__path__)[0])')"
    LIBRARY_PATH_LINE="export LD_LIBRARY_PATH=\"$LIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
fi

# A model folder of the bundle, copied into PREFIX (when installing elsewhere) and verified against its manifest.
install_model() {  # $1: the folder under models/, $2: what it is, for the messages
    if [ "$PREFIX" != "$HERE" ]; then
        echo "==> Copying $2 to $PREFIX/models/$1"
        mkdir -p "$PREFIX/models"
        rm -rf "${PREFIX:?}/models/$1"
        cp -R "$HERE/models/$1" "$PREFIX/models/$1"
    fi
    echo "==> Verifying $2 against its manifest"
    "$PREFIX/venv/bin/stt-engine" models verify "$PREFIX/models/$1"
}

MODEL_PATH=""
if [ -n "$MODEL_NAME" ]; then
    install_model "$MODEL_NAME" "the model"
    MODEL_PATH="$PREFIX/models/$MODEL_NAME"
fi
SPEAKER_MODEL_PATH=""
if [ -d "$HERE/models/campplus-cn-en-common" ]; then
    install_model campplus-cn-en-common "the speaker model (diarization)"
    SPEAKER_MODEL_PATH="$PREFIX/models/campplus-cn-en-common"
fi
mkdir -p "$PREFIX/logs" "$PREFIX/audio"

if [ ! -e "$PREFIX/.env" ]; then
    echo "==> Writing $PREFIX/.env"
    {
        echo "# Written by install.sh; see docs/deployment.md for every setting."
        if [ -n "$MODEL_PATH" ]; then echo "WHISPER_MODEL=$MODEL_PATH"; fi
        if [ -n "$SPEAKER_MODEL_PATH" ]; then echo "DIARIZATION_MODEL_DIR=$SPEAKER_MODEL_PATH"; fi
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
