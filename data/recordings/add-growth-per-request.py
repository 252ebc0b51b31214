#!/usr/bin/env python3
"""Adds the `db_growth_per_request` column to recordings made before the feature existed.

The recorder now exports it from Prometheus (`deriv` of the db size over twelve steps
divided by the unary request rate over the same twelve steps, at least 30/s). Recordings
made earlier hold what it takes to compute it offline: the db size as a fraction of the
quota (times the quota in the `.meta` file), and the request rate over four-step windows.
Offline, `deriv` is the least-squares slope of the last twelve steps' sizes (the samples
PromQL's `deriv` fits, one per 1 s scrape) and the rate over twelve steps the mean of the
three four-step rates that tile them. Recordings made since carry Prometheus's own column.

Usage: add-growth-per-request.py NAME.csv...   (rewrites each file in place; a file that
already has the column is left alone)
"""

import csv
import sys
from pathlib import Path

COLUMN = "db_growth_per_request"
STEPS = 12
RATE_STEPS = 4
REQUEST_FLOOR = 30.0


def quota_bytes(csv_path: Path) -> float:
    base = csv_path.name.split(".")[0]
    meta = (csv_path.parent / f"{base}.meta").read_text().split()
    fields = dict(kv.split("=", 1) for kv in meta)
    return float(fields["quota_mib"]) * 2**20


def slope(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def column(rows: list[dict], quota: float) -> list[str]:
    ts = [float(r["timestamp"]) for r in rows]
    size = [float(r["db_size_over_quota"]) * quota for r in rows]
    rate = [float(r["grpc_request_rate"]) for r in rows]
    out = []
    for t in range(len(rows)):
        lo = max(0, t - STEPS + 1)
        growth = slope(ts[lo : t + 1], size[lo : t + 1])
        rates = [rate[k] for k in range(t, lo - 1, -RATE_STEPS)][: STEPS // RATE_STEPS]
        requests = max(sum(rates) / len(rates), REQUEST_FLOOR)
        out.append(repr(growth / requests))
    return out


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        if COLUMN in header:
            print(f"{path}: already has {COLUMN}")
            continue
        values = column(rows, quota_bytes(path))
        at = header.index("defrag_inflight")
        header.insert(at, COLUMN)
        with path.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            for row, value in zip(rows, values):
                row[COLUMN] = value
                writer.writerow([row[h] for h in header])
        print(f"{path}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
