#!/usr/bin/env python3
"""A second implementation of dr-detector's scoring, in numpy, as a check.

It reads model.json and model.safetensors, repeats the same steps as the Rust code
(fill defrag-masked steps from the nearest earlier unmasked step, normalise and clip,
encoder LSTM, decoder LSTM fed the final encoder state at every step, linear output,
mean squared error over unmasked steps) and compares its scores with the ones
`dr-detector score` printed for the same windows.

    python forward.py --model DIR --scores rust.json [--tolerance 1e-4]

Exits 1 when any score or feature share differs by more than the tolerance.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

CLIP = 20.0  # model::normalisation::CLIP


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


def fill_masked(values, mask):
    if all(mask):
        raise ValueError("every step is masked")
    out = values.copy()
    source = mask.index(False)
    for step, masked in enumerate(mask):
        if masked:
            out[step] = out[source]
        else:
            source = step
    return out


def score(model_dir, weights, meta, values, mask):
    # `std` already holds each feature's floor (`std_floor`, recorded beside it): divide as is.
    norm = meta["normalisation"]
    mean = np.asarray(norm["mean"], dtype=np.float64)
    std = np.asarray(norm["std"], dtype=np.float64)
    filled = fill_masked(np.asarray(values, dtype=np.float64), mask)
    x = np.clip((filled - mean) / std, -CLIP, CLIP).astype(np.float32)

    enc = lstm(x, *(weights[f"encoder.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    repeated = np.repeat(enc[-1][None, :], x.shape[0], axis=0)
    dec = lstm(repeated, *(weights[f"decoder.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    recon = dec @ weights["output.weight"].T + weights["output.bias"]

    keep = ~np.asarray(mask)
    err = (x.astype(np.float64) - recon.astype(np.float64)) ** 2
    per_feature = err[keep].sum(axis=0)
    total = per_feature.sum()
    shares = per_feature / total if total > 0 else np.zeros_like(per_feature)
    return total / (keep.sum() * x.shape[1]), shares


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--scores", required=True, type=Path, help="JSON from `dr-detector score`")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    meta = json.loads((args.model / "model.json").read_text())
    weights = load_file(str(args.model / "model.safetensors"))
    theirs = json.loads(args.scores.read_text())["windows"]
    if not theirs:
        sys.exit("no windows to compare")

    worst = 0.0
    for window in theirs:
        ours, shares = score(args.model, weights, meta, window["values"], window["mask"])
        diff = max(abs(ours - window["score"]), float(np.max(np.abs(shares - window["feature_shares"]))))
        worst = max(worst, diff)
        print(f"window at row {window['start']:>6}: rust {window['score']:.6f} numpy {ours:.6f} (diff {diff:.2e})")
    verdict = "agree" if worst <= args.tolerance else "DISAGREE"
    print(f"{len(theirs)} windows, largest difference {worst:.2e}: {verdict} (tolerance {args.tolerance})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
