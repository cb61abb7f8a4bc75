#!/usr/bin/env python3
"""Summarises arbiter-load --json runs (one JSON object per line on stdin).

    bench-summary.py          the median run by rate, as one line
    bench-summary.py --half   half of the median rate, as an integer
"""
import json
import sys

runs = sorted((json.loads(line) for line in sys.stdin if line.strip()), key=lambda r: r["rate"])
if not runs:
    sys.exit("no runs")
median = runs[len(runs) // 2]
if sys.argv[1:] == ["--half"]:
    print(int(median["rate"] / 2))
    sys.exit(0)
lat = median["latency_us"]
rates = " ".join(str(round(r["rate"])) for r in runs)
print(
    f"{median['rate']:9.0f}/s  p50 {lat['p50']}µs p90 {lat['p90']}µs p99 {lat['p99']}µs "
    f"p99.9 {lat['p999']}µs max {lat['max']}µs  allowed {median['allowed']} "
    f"denied {sum(median['denied'].values())} errors {sum(median['errors'].values())}  "
    f"(rates of {len(runs)} runs: {rates})"
)
