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
# A run whose requests were denied or failed measured something else than
# the decision it names (a wrong key, a dead Arbiter): no figure from it.
bad = [
    r for r in runs
    if r["requests"] == 0 or r["allowed"] != r["requests"] or sum(r["denied"].values()) or sum(r["errors"].values())
]
if bad:
    for r in bad:
        print(
            f"run at {r['rate']:.0f}/s: {r['requests']} requests, {r['allowed']} allowed, "
            f"denied {r['denied']}, errors {r['errors']}",
            file=sys.stderr,
        )
    sys.exit("not every request was allowed: these runs measure no decision")
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
