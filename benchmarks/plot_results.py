"""Plots of benchmark results: python benchmarks/plot_results.py benchmarks/results/<machine>-<suite>.json

Writes <json>.png beside the JSON: per case, every impl's speedup over the case's baseline (eager PyTorch,
measured in the same run), with the IQR of the timing as error bars. Needs matplotlib.
"""
import json
import sys
from collections import OrderedDict
from pathlib import Path


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    recs = [r for r in data["results"] if r.get("speedup_vs_baseline")]
    cases = list(OrderedDict.fromkeys(r["case"] for r in recs))
    impls = [i for i in OrderedDict.fromkeys(r["impl"] for r in recs) if not any(
        r["impl"] == i and r["baseline"] for r in recs)]
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(cases) * max(len(impls), 1)), 5))
    for k, impl in enumerate(impls):
        xs, ys, errs = [], [], []
        for i, case in enumerate(cases):
            r = next((r for r in recs if r["case"] == case and r["impl"] == impl), None)
            if r is None:
                continue
            base = r["median_s"] * r["speedup_vs_baseline"]
            lo, hi = base / (r["median_s"] + r["iqr_s"] / 2), base / max(r["median_s"] - r["iqr_s"] / 2, 1e-12)
            xs.append(i + (k - (len(impls) - 1) / 2) * width)
            ys.append(r["speedup_vs_baseline"])
            errs.append((r["speedup_vs_baseline"] - lo, hi - r["speedup_vs_baseline"]))
        ax.bar(xs, ys, width, label=impl, yerr=list(zip(*errs)) if errs else None, capsize=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("speedup over eager (same run)")
    m = data["machine"]
    where = m.get("gpu") or f"CPU, {m.get('threads')} threads"
    ax.set_title(f"{path.stem}: {where}, torch {m['torch']}, commit {m.get('commit')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(plot(Path(arg)))
