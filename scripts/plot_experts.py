#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Draws deepmoe-train's expert-activation report as a heatmap.

Input: the CSV that deepmoe-train writes at the end of a run (RUN/expert_activation.csv):
`source,layer,expert,tokens,share` — for each source of validation text, MoE layer and routed
expert, the tokens routed there and their share of the source's routed tokens in that layer.

Output: a PNG with one panel per MoE layer (rows: sources, columns: experts, colour: share),
each titled with the total-variation distance between the first two sources' distributions,
TV = ½·Σ_e |share_a(e) − share_b(e)| (0: the sources use the experts alike; 1: disjoint experts)
— the measured form of "experts specialize by domain". The same numbers are printed.

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-plot.txt
    .venv/bin/python scripts/plot_experts.py runs/main/expert_activation.csv [-o out.png]
"""
import argparse
import csv
import collections

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    share = collections.defaultdict(dict)  # (layer) -> {(source, expert): share}
    sources, experts = [], set()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            layer, expert = int(row["layer"]), int(row["expert"])
            if row["source"] not in sources:
                sources.append(row["source"])
            experts.add(expert)
            share[layer][(row["source"], expert)] = float(row["share"])
    return share, sources, sorted(experts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("-o", "--output", help="PNG path (default: beside the CSV)")
    a = ap.parse_args()
    share, sources, experts = read(a.csv)
    layers = sorted(share)
    if not layers:
        raise SystemExit(f"{a.csv}: no MoE layer rows")
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(6, 0.45 * len(experts) + 2), 1.2 + 0.9 * len(layers) * max(1, len(sources)) / 2), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        grid = [[share[layer].get((s, e), 0.0) for e in experts] for s in sources]
        tv = 0.5 * sum(abs(x - y) for x, y in zip(grid[0], grid[1])) if len(grid) >= 2 else float("nan")
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xticks(range(len(experts)), [str(e) for e in experts], fontsize=7)
        ax.set_title(f"layer {layer}: share of routed tokens per expert (TV {sources[0]}/{sources[1] if len(sources) > 1 else '-'} = {tv:.2f})", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025)
        print(f"layer {layer}: total-variation distance between sources {tv:.3f}")
    axes[-1, 0].set_xlabel("routed expert")
    fig.tight_layout()
    out = a.output or a.csv.rsplit(".", 1)[0] + ".png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
