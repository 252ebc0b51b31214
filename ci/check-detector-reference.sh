#!/usr/bin/env bash
# The numpy reference forward pass (detector/reference/forward.py) must give the same
# scores and feature shares as dr-detector, to 1e-4, on windows of fresh synthetic data
# (normal, incident and defrag-masked ones) scored with the shipped default model.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DR_VENV:-target/venv}
model=${DR_DETECTOR_REFERENCE_MODEL:-detector/models/default}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r detector/reference/requirements.txt

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step=$(sed -n 's/^ *"step_seconds": *\([0-9.]*\),*$/\1/p' "$model/model.json" | head -n 1)
cargo run --quiet --locked -p dr-detector --example synth_dataset -- "$work/data.csv" 3000 "$step" 5
cargo run --quiet --locked -p dr-detector -- score --model "$model" --data "$work/data.csv" --count 12 >"$work/rust.json"
"$venv/bin/python" detector/reference/forward.py --model "$model" --scores "$work/rust.json" --tolerance 1e-4
