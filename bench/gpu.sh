#!/usr/bin/env bash
# VGG-11 on CIFAR-10 and PGD-20 on one NVIDIA GPU with JAX (CUDA), no TensorFlow, no network.
#
# On a machine with network (here), build the wheel folder the GPU machine installs from:
#   pip wheel --no-deps . keras absl-py namex optree rich markdown-it-py mdurl pygments h5py packaging \
#       click jinja2 markupsafe tqdm -w wheels/
# (robust itself with --no-deps: its default dependency, TensorFlow, is what the GPU machine lacks;
# jax, jaxlib and numpy come from the GPU machine's own install). Copy wheels/, this checkout and
# cifar10.npz there, then:
#   ROBUST_DATA_DIR=/path/to/data bash bench/gpu.sh [--wheels DIR] [--mixed-precision] [...]
#   bash bench/gpu.sh --smoke            # the same on the CPU, a few hundred images (any machine)
# Other options go to bench/gpu.py. KERAS_BACKEND=torch runs the same on PyTorch's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

wheels=wheels
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"

if ! python3 -c "import robust, keras" 2>/dev/null; then
  [ -d "$wheels" ] || { echo "gpu.sh: robust is not installed and there is no wheel folder '$wheels' (see the top of this file)" >&2; exit 2; }
  # A venv that sees the machine's own jax / torch (CUDA builds); the wheels bring keras and robust.
  python3 -m venv --system-site-packages .venv-gpu
  . .venv-gpu/bin/activate
  pip install -q --no-index --no-deps "$wheels"/*.whl
fi

python3 -c "import tensorflow" 2>/dev/null && echo "gpu.sh: note: TensorFlow is importable here; robust will not use it under KERAS_BACKEND=$KERAS_BACKEND"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
time python3 bench/gpu.py "${args[@]}"
