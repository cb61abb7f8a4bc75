#!/usr/bin/env python3
"""Prints which top-level modules of src/ each module uses (crate:: and
super:: paths outside #[cfg(test)]), and any cycle among them; exits 1 on a
cycle. The data flow is one way, so there must be none:

    python3 scripts/import-graph.py
"""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
modules = sorted(
    name[:-3] if name.endswith(".rs") else name
    for name in os.listdir(root)
    if name not in ("lib.rs", "main.rs", "bin")
)
uses = {m: set() for m in modules}
for directory, _, files in os.walk(root):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(directory, name)
        top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
        if top not in uses:
            continue
        code = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
        for used in re.findall(r"(?:crate|super)::([a-z_]+)", code):
            if used in uses and used != top:
                uses[top].add(used)
for module in modules:
    print(f"{module} -> {', '.join(sorted(uses[module])) or '(nothing)'}")

cycles = []


def visit(module, path):
    for used in sorted(uses[module]):
        if used in path:
            cycles.append(path[path.index(used):] + [used])
        else:
            visit(used, path + [used])


for module in modules:
    visit(module, [module])
for cycle in cycles:
    print("cycle:", " -> ".join(cycle))
sys.exit(1 if cycles else 0)
