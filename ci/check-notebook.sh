#!/usr/bin/env bash
# Runs the teaching notebook (notebooks/etcd_dr_model.ipynb) headless with nbclient and
# fails on any error in any cell (the notebook asserts that numpy and dr-detector agree).
# The executed copy goes to target/notebook/; the committed notebook is only read, and
# must be committed without outputs.
#
# Env: DR_VENV (default target/venv, see ci/install-deps.sh); DR_DETECTOR_BIN (default:
# build dr-detector, debug profile, in CARGO_TARGET_DIR or target/); DR_NOTEBOOK_MODEL (the
# format 2 model directory the notebook explains, default detector/models/default; a format 1
# one fails the first cell);
# DR_NOTEBOOK_RECORDINGS (default data/recordings); DR_NOTEBOOK_CELL_TIMEOUT (s, default 300);
# DR_NOTEBOOK_TIMEOUT (the whole run, s, default 900). The kernel inherits the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DR_VENV:-target/venv}
[[ $venv == /* ]] || venv=$PWD/$venv
notebook=notebooks/etcd_dr_model.ipynb
out_dir=target/notebook
cell_timeout=${DR_NOTEBOOK_CELL_TIMEOUT:-300}
total_timeout=${DR_NOTEBOOK_TIMEOUT:-900}

if [[ ! -x $venv/bin/python ]]; then
  echo "check-notebook: no Python venv at $venv; run ci/install-deps.sh" >&2
  exit 1
fi
if [[ -z ${DR_DETECTOR_BIN:-} ]]; then
  cargo build --quiet --locked -p dr-detector --bin dr-detector
  target_dir=${CARGO_TARGET_DIR:-target}
  [[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
  DR_DETECTOR_BIN=$target_dir/debug/dr-detector
fi
export DR_DETECTOR_BIN

# The kernel is the venv's Python: a kernelspec of our own, first on JUPYTER_PATH, so a
# `python3` kernel installed elsewhere on the machine cannot be picked instead.
mkdir -p "$out_dir/jupyter/kernels/python3"
cat >"$out_dir/jupyter/kernels/python3/kernel.json" <<EOF
{"argv": ["$venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (etcd-dr venv)", "language": "python"}
EOF
export JUPYTER_PATH=$PWD/$out_dir/jupyter
export MPLBACKEND=Agg

started=$SECONDS
if timeout --kill-after=30 "$total_timeout" "$venv/bin/python" - "$notebook" "$out_dir/etcd_dr_model.ipynb" "$cell_timeout" <<'PY'
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, executed, cell_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(source, as_version=4)
with_outputs = [i for i, c in enumerate(nb.cells)
                if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
if with_outputs:
    sys.exit(f"check-notebook: {source} is committed with outputs (cells {with_outputs}); "
             "clear them (Jupyter: Edit > Clear All Outputs, or "
             "jupyter nbconvert --clear-output --inplace)")
client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                        resources={"metadata": {"path": "notebooks"}})
try:
    client.execute()
except CellExecutionError as err:
    print(f"check-notebook: a cell failed:\n{err}", file=sys.stderr)
    sys.exit(1)
finally:
    nbformat.write(nb, executed)
PY
then
  echo "check-notebook: all cells ran in $((SECONDS - started))s; executed copy: $out_dir/etcd_dr_model.ipynb"
else
  status=$?
  ((status != 124)) || echo "check-notebook: the whole run took over ${total_timeout}s" >&2
  echo "check-notebook: FAILED after $((SECONDS - started))s; executed copy: $out_dir/etcd_dr_model.ipynb" >&2
  exit "$status"
fi
