#!/usr/bin/env bash
# The numpy reference forward pass (detector/reference/forward.py) must give the same
# scores and feature shares as dr-detector, to 1e-4, on windows of fresh synthetic data
# (normal, incident and defrag-masked ones) scored with the shipped default model, whichever
# format it is (format 2, with or without `scoring_v2.level`: against the baseline of the whole
# synthetic file, which forward.py fits again from the same CSV).
#
# Env: DR_DETECTOR_REFERENCE_MODEL (default detector/models/default); DR_VENV (default
# target/venv); DR_DETECTOR_BIN and DR_SYNTH_DATASET_BIN (prebuilt dr-detector and
# synth_dataset example; default: `cargo run` them).
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

synth() {
  if [[ -n ${DR_SYNTH_DATASET_BIN:-} ]]; then "$DR_SYNTH_DATASET_BIN" "$@"
  else cargo run --quiet --locked -p dr-detector --example synth_dataset -- "$@"; fi
}
detector() {
  if [[ -n ${DR_DETECTOR_BIN:-} ]]; then "$DR_DETECTOR_BIN" "$@"
  else cargo run --quiet --locked -p dr-detector -- "$@"; fi
}

# The synthetic data at the model's step, with the default feature names (those of both
# formats' default models); `score` refuses a CSV without the model's columns.
step=$("$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["step_seconds"])' "$model/model.json")
synth "$work/data.csv" 3000 "$step" 5
detector score --model "$model" --data "$work/data.csv" --count 12 >"$work/rust.json"
"$venv/bin/python" detector/reference/forward.py --model "$model" --scores "$work/rust.json" \
  --data "$work/data.csv" --tolerance 1e-4
