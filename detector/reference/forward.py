#!/usr/bin/env python3
"""A second implementation of dr-detector's scoring, in numpy, as a check.

It reads model.json and model.safetensors, repeats the same steps as the Rust code and
compares its scores and feature shares with the ones `dr-detector score` printed for the
same windows. Both model formats (`format_version` in model.json):

* format 1: fill defrag-masked steps from the nearest earlier unmasked step, normalise
  with the model's one global mean and std and clip, encoder LSTM, decoder LSTM fed the
  final encoder state at every step, linear output; the score is the mean squared error
  over the unmasked steps, the shares each feature's part of that sum;
* format 2: each raw value through its transform (`scoring_v2.transforms`), set against
  the instance's own robust baseline (median and 1.4826 * MAD of the transformed,
  unmasked rows, each scale at least its `normalisation.std_floor`) and clipped, the same
  LSTM autoencoder (with `scoring_v2.mask_lead_steps`, 0 when absent, that many steps
  before each masked run of the window are masked too); each feature's error is its squared error over the window's last
  `tail_steps` unmasked steps (upward features: only input above the reconstruction),
  combined by `scoring_v2.tail_aggregate`: `mean` (when absent) or `max`, the largest
  single step's; with `scoring_v2.level` (false when absent) the larger of that and the
  same of the input's own squares over the same steps, its distance from the baseline
  (upward features: only above it); divided by its calibration (context features: 0);
  the score is the largest, the shares each over their sum.
  `dr-detector score` treats its CSV as one instance and fits that baseline on the whole
  file, so format 2 needs the same CSV here (`--data`).

    python forward.py --model DIR --scores rust.json [--data data.csv] [--tolerance 1e-4]

Exits 1 when any score or feature share differs by more than the tolerance.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

CLIP = 20.0  # model::normalisation::CLIP
MAD_TO_SIGMA = 1.4826  # model::transform::MAD_TO_SIGMA
DEFRAG_MASK = "defrag_inflight"  # model::features::DEFRAG_MASK


def sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch LSTM (gates i, f, g, o) over x[steps, inputs]; returns h[steps, hidden]."""
    hidden = w_hh.shape[1]
    h = np.zeros(hidden, dtype=np.float32)
    c = np.zeros(hidden, dtype=np.float32)
    out = np.empty((x.shape[0], hidden), dtype=np.float32)
    for t in range(x.shape[0]):
        gates = w_ih @ x[t] + b_ih + w_hh @ h + b_hh
        i, f, g, o = np.split(gates, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out[t] = h
    return out


def reconstruct(weights, x):
    """The autoencoder (model/lstm.rs) on one normalised window x[steps, features] (f32)."""
    enc = lstm(x, *(weights[f"encoder.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    repeated = np.repeat(enc[-1][None, :], x.shape[0], axis=0)
    dec = lstm(repeated, *(weights[f"decoder.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    return dec @ weights["output.weight"].T + weights["output.bias"]


def fill_masked(values, mask):
    """scoring::fill_masked: masked steps take the nearest earlier unmasked step (the first
    unmasked one at the start)."""
    mask = [bool(m) for m in mask]
    if all(mask):
        raise ValueError("every step is masked")
    out = np.array(values, dtype=np.float64, copy=True)
    source = mask.index(False)
    for step, masked in enumerate(mask):
        if masked:
            out[step] = out[source]
        else:
            source = step
    return out


def normalise(values, mean, std):
    """Normalisation::apply: clip((x - mean) / std) as the model's f32 input."""
    return np.clip((values - np.asarray(mean, np.float64)) / np.asarray(std, np.float64), -CLIP, CLIP).astype(
        np.float32
    )


# ---------------------------------------------------------------------------- format 1


def score_v1(weights, meta, values, mask):
    # `std` already holds each feature's floor (`std_floor`, recorded beside it): divide as is.
    norm = meta["normalisation"]
    x = normalise(fill_masked(values, mask), norm["mean"], norm["std"])
    recon = reconstruct(weights, x)
    keep = ~np.asarray(mask, dtype=bool)
    err = (x.astype(np.float64) - recon.astype(np.float64)) ** 2
    per_feature = err[keep].sum(axis=0)
    total = per_feature.sum()
    shares = per_feature / total if total > 0 else np.zeros_like(per_feature)
    return total / (keep.sum() * x.shape[1]), shares


# ---------------------------------------------------------------------------- format 2


def apply_transform(t, x):
    """transform::Transform::apply, on a scalar or an array, in float64."""
    x = np.asarray(x, dtype=np.float64)
    kind = t["kind"]
    if kind == "identity":
        return x.copy()
    if kind == "scale":
        return x * t["factor"]
    if kind == "log1p":
        return np.log1p(np.maximum(x * t["factor"], 0.0))
    if kind == "log10":
        return np.log10(np.maximum(x, t["floor"]))
    if kind == "headroom":
        return -np.log10(np.maximum(1.0 - x, t["floor"]))
    raise ValueError(f"unknown transform kind `{kind}`")


def transform_rows(meta, rows):
    """Every feature column of rows[steps, features] through its transform."""
    rows = np.asarray(rows, dtype=np.float64)
    transforms = meta["scoring_v2"]["transforms"]
    return np.stack([apply_transform(t, rows[..., j]) for j, t in enumerate(transforms)], axis=-1)


def fit_baseline(transformed, keep, floors):
    """transform::fit_baseline: per feature the median and 1.4826 * MAD of the rows where
    `keep` is true, the scale at least its floor (None: 0.1% of the median, >= 1e-6).
    Returns (centre, scale) arrays."""
    rows = np.asarray(transformed, dtype=np.float64)[np.asarray(keep, dtype=bool)]
    centre, scale = [], []
    for j, floor in enumerate(floors):
        column = rows[:, j]
        c = float(np.median(column)) if len(column) else 0.0
        mad = float(np.median(np.abs(column - c))) if len(column) else 0.0
        if floor is None:
            floor = max(1e-3 * abs(c), 1e-6)
        centre.append(c)
        scale.append(max(MAD_TO_SIGMA * mad, floor))
    return np.array(centre), np.array(scale)


def instance_baseline(meta, rows, mask=None):
    """Scorer::instance_baseline: the robust baseline of one instance's raw rows (model
    feature order), leaving out the masked (defrag) steps, with the model's floors."""
    rows = np.asarray(rows, dtype=np.float64)
    keep = np.ones(len(rows), bool) if mask is None else ~np.asarray(mask, dtype=bool)
    floors = list(meta["normalisation"].get("std_floor") or [])
    if len(floors) != rows.shape[1]:
        raise ValueError("a format 2 model.json needs one normalisation.std_floor per feature")
    return fit_baseline(transform_rows(meta, rows), keep, floors)


def lead_mask(mask, lead):
    """scoring::lead_mask: the `lead` steps before each masked run masked too (inside the
    window only, so the newest step never is for a run not yet seen)."""
    mask = [bool(m) for m in mask]
    out = list(mask)
    for step, masked in enumerate(mask):
        if masked:
            for before in range(max(step - lead, 0), step):
                out[before] = True
    return out


def prepare_v2(meta, values, mask, baseline):
    """scoring::prepare_v2: fill masked steps, transform, set against the baseline, clip."""
    centre, scale = baseline
    return normalise(transform_rows(meta, fill_masked(values, mask)), centre, scale)


def tail_errors(x, recon, mask, tail, upward, level=False, aggregate="mean"):
    """scoring::tail_errors: each feature's squared error over the last `tail` unmasked
    steps, their mean or (`aggregate="max"`) the largest single step's; for upward features
    only input above the reconstruction counts. With `level`, also the same of the input's
    own squares (its distance from the baseline; upward features: only above it), and per
    feature the larger of the two."""
    if aggregate not in ("mean", "max"):
        raise ValueError(f"tail_aggregate {aggregate!r} is neither mean nor max")
    steps = [s for s in range(len(mask) - 1, -1, -1) if not mask[s]][:tail]
    if not steps:
        raise ValueError("every step is masked")

    def combine(a):
        return a.sum(axis=0) / len(steps) if aggregate == "mean" else a.max(axis=0)

    xs = x[steps].astype(np.float64)
    d = xs - recon[steps].astype(np.float64)
    up = np.zeros(x.shape[1], bool) if not upward else np.asarray(upward, dtype=bool)
    d = np.where(up[None, :] & (d <= 0.0), 0.0, d)
    errors = combine(d * d)
    if level:
        lv = np.where(up[None, :] & (xs <= 0.0), 0.0, xs)
        errors = np.maximum(errors, combine(lv * lv))
    return errors


def score_v2(weights, meta, values, mask, baseline=None):
    """Format 2's score and shares of one raw window against `baseline` ((centre, scale);
    None: the model's pooled reference, as `POST /score` uses without history)."""
    v2 = meta["scoring_v2"]
    if baseline is None:
        baseline = (np.asarray(meta["normalisation"]["mean"]), np.asarray(meta["normalisation"]["std"]))
    mask = lead_mask(mask, v2.get("mask_lead_steps", 0))
    x = prepare_v2(meta, values, mask, baseline)
    recon = reconstruct(weights, x)
    errors = tail_errors(
        x,
        recon,
        [bool(m) for m in mask],
        v2["tail_steps"],
        v2.get("upward") or [],
        bool(v2.get("level", False)),
        v2.get("tail_aggregate", "mean"),
    )
    calibrated = np.where(v2["scored"], errors / np.asarray(v2["calibration"], np.float64), 0.0)
    total = calibrated.sum()
    shares = calibrated / total if total > 0 else np.zeros_like(calibrated)
    return float(max(calibrated.max(), 0.0)), shares


def trailing_baselines(meta, rows, mask=None):
    """baseline::Trailing: the baselines serving would have had over one instance's rows,
    refitted at steps 0, R, 2R, ... on the `history_steps` rows before each refit point.
    Returns a function end -> (baseline, ready) for the window ending at step `end`."""
    policy = meta["scoring_v2"]["baseline"]
    history, refresh, need = policy["history_steps"], policy["refresh_steps"], policy["min_steps"]
    rows = np.asarray(rows, dtype=np.float64)
    keep = np.ones(len(rows), bool) if mask is None else ~np.asarray(mask, dtype=bool)
    transformed = transform_rows(meta, rows)
    floors = list(meta["normalisation"]["std_floor"])
    fits = []
    for at in range(0, len(rows), refresh):
        lo = max(at - history, 0)
        fits.append((fit_baseline(transformed[lo:at], keep[lo:at], floors), int(keep[lo:at].sum()) >= need))
    return lambda end: fits[end // refresh]


# ---------------------------------------------------------------------------- both


def score(model_dir, weights, meta, values, mask, baseline=None):
    """The score and feature shares of one raw window (rows in the model's feature order),
    for either format; `baseline` is format 2's (centre, scale), ignored by format 1."""
    if meta["format_version"] == 1:
        return score_v1(weights, meta, values, mask)
    if meta["format_version"] == 2:
        return score_v2(weights, meta, values, mask, baseline)
    raise ValueError(f"model format version {meta['format_version']} is not supported")


def read_csv(path, meta):
    """A dr-detector CSV as Dataset::read + for_model read it: the model's feature columns
    in its order (rows[steps, features]) and the defrag mask (all False without one)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].split(",")]
    names = [f["name"] for f in meta["features"]]
    missing = [n for n in names if n not in header]
    if missing:
        raise ValueError(f"{path} lacks the model's feature column(s) {', '.join(missing)}")
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    step = float(np.sort(np.diff(table[:, 0]))[(len(table) - 1) // 2])
    if abs(step - meta["step_seconds"]) > 0.01 * meta["step_seconds"]:
        raise ValueError(f"{path}: its step is {step}s but the model's is {meta['step_seconds']}s")
    rows = table[:, [header.index(n) for n in names]]
    mask = table[:, header.index(DEFRAG_MASK)] > 0 if DEFRAG_MASK in header else np.zeros(len(table), bool)
    return rows, mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--scores", required=True, type=Path, help="JSON from `dr-detector score`")
    parser.add_argument(
        "--data", type=Path, help="the CSV given to `dr-detector score` (format 2: its baseline is the whole file's)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    meta = json.loads((args.model / "model.json").read_text())
    weights = load_file(str(args.model / "model.safetensors"))
    theirs = json.loads(args.scores.read_text())["windows"]
    if not theirs:
        sys.exit("no windows to compare")
    baseline = None
    if meta["format_version"] == 2:
        if args.data is None:
            sys.exit("a format 2 model scores against the instance's baseline: give the CSV with --data")
        rows, mask = read_csv(args.data, meta)
        baseline = instance_baseline(meta, rows, mask)
        for window in theirs:
            # The windows' values must be the CSV's rows, or the baseline is another's.
            got = np.asarray(window["values"])
            if not np.array_equal(got, rows[window["start"] : window["start"] + len(got)]):
                sys.exit(f"the window at row {window['start']} is not in {args.data}")
    print(f"model format {meta['format_version']}: {args.model}")

    worst = 0.0
    for window in theirs:
        ours, shares = score(args.model, weights, meta, window["values"], window["mask"], baseline)
        diff = max(abs(ours - window["score"]), float(np.max(np.abs(shares - window["feature_shares"]))))
        if not math.isfinite(diff):
            diff = math.inf
        worst = max(worst, diff)
        print(f"window at row {window['start']:>6}: rust {window['score']:.6f} numpy {ours:.6f} (diff {diff:.2e})")
    verdict = "agree" if worst <= args.tolerance else "DISAGREE"
    print(f"{len(theirs)} windows, largest difference {worst:.2e}: {verdict} (tolerance {args.tolerance})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
