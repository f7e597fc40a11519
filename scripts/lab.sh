#!/usr/bin/env bash
# `make lab`: JupyterLab on notebooks/ with the kit's kernel and workshop settings (scripts/jupyterlab-overrides.json,
# installed by make install). The access URL, token included, is printed once; Jupyter's own banner (which repeats
# it) is below the WARN log level.
#   VENV (default .venv), LAB_PORT (default 8888), LAB_IP (default 127.0.0.1; 0.0.0.0 to serve a workshop VM)
set -euo pipefail
VENV=${VENV:-.venv}
port=${LAB_PORT:-8888}
ip=${LAB_IP:-127.0.0.1}
token=${JUPYTER_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')}
# The kernels' transport encrypted, as `labkit run` has it (labkit/kernels.py): ipykernel otherwise warns on every
# kernel start that it runs "over TCP without encryption".
kernels=$("$VENV/bin/python" -m labkit.kernels)
read -ra extra <<< "$kernels"
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi  # a workshop VM or container often runs as root
# The kit's server config beside the user's own (which still load): a log without tornado's ping notice, which upstream
# prints on every notebook connect (labkit/kernels.py, PingNoticeFilter).
export JUPYTER_CONFIG_PATH="$(cd "$(dirname "$0")" && pwd)/jupyter-config${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
echo "JupyterLab: http://${ip}:${port}/lab?token=${token}"
exec "$VENV/bin/jupyter" lab --ServerApp.root_dir=notebooks --ip="$ip" --port="$port" --ServerApp.port_retries=0 \
  --IdentityProvider.token="$token" --log-level=WARN --LabApp.log_level=WARN --no-browser "${extra[@]}"
