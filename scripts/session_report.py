"""Write the GPU section of docs/results.md from the output folder of scripts/gpu_session.sh.

usage: python3 scripts/session_report.py OUT [gpu|rehearse]

Reads OUT/steps.tsv, OUT/environment.txt, OUT/models/models_results.md, OUT/compare-*/
(compare_table.md, runs/*/metrics.jsonl and config.json) and OUT/train-noact/; copies the
plots to OUT/img/gpu/ and writes OUT/results_gpu.md, whose image links are relative to docs/
(so that `cp OUT/img/gpu/* docs/img/gpu/` makes them resolve there). Missing pieces (a step
that failed or ran out of time) are reported as such; nothing is estimated.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

RUNS = [
    # (what the run is, its folder under OUT); the model's name comes from its config.json
    ("ResNet, plain", "compare-resnet/runs/plain-seed0"),
    ("ODE-ResNet (the paper's f), anode: the recipe", "compare-resnet/runs/anode-seed0"),
    ("ODE-ResNet, backsolve", "compare-resnet/runs/backsolve-seed0"),
    ("ODE-ResNet without f's last ReLU, anode", "train-noact"),
    ("SqueezeNext, plain", "compare-sqnxt/runs/plain-seed0"),
    ("ODE-SqueezeNext, anode", "compare-sqnxt/runs/anode-seed0"),
    ("ODE-SqueezeNext, backsolve", "compare-sqnxt/runs/backsolve-seed0"),
]


def _records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_row(label: str, folder: Path) -> str:
    recs = _records(folder)
    config = _config(folder)
    planned = config.get("epochs", "?")
    if config.get("model"):
        label = f"{label} (`{config['model']}`)"
    if not recs:
        return f"| {label} | 0 / {planned} | – | – | – | – | – |"
    last = recs[-1]
    images = last.get("test_images")
    acc = f"{100 * last['test_acc']:.2f}" + (f" ({images} images)" if images else "")
    train_min = sum(r.get("train_time_s", 0) for r in recs) / 60
    wall_min = sum(r.get("epoch_time_s", 0) for r in recs) / 60
    later = [r["images_per_s"] for r in recs[len(recs) // 2:] if r.get("images_per_s")]
    speed = f"{sum(later) / len(later):,.0f}" if later else "–"
    diverged = " (diverged)" if (folder / "diverged.json").is_file() else ""
    return (f"| {label} | {len(recs)} / {planned}{diverged} | {acc} | {last['train_loss']:.3f} | "
            f"{train_min:.1f} | {wall_min:.1f} | {speed} |")


def _copy_plots(out: Path) -> list[tuple[str, str]]:
    dest = out / "img" / "gpu"
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for png in sorted(out.glob("compare-*/*.png")) + sorted(out.glob("train-noact/*.png")):
        name = f"{png.parent.name}_{png.name}"
        shutil.copy(png, dest / name)
        copied.append((name, f"img/gpu/{name}"))
    return copied


def main(out: Path, mode: str) -> None:
    rehearsal = " (CPU rehearsal, tiny sizes: not a measurement)" if mode == "rehearse" else ""
    lines = ["## On one GPU" + rehearsal, ""]
    env = (out / "environment.txt").read_text().strip() if (out / "environment.txt").is_file() else "unknown"
    lines += ["Measured by `scripts/gpu_session.sh` (see its header; data: the CIFAR-10 mosaic of "
              "`scripts/prepare_carry.sh`). Machine and software:", "", "```", env, "```", ""]
    steps = (out / "steps.tsv").read_text().strip().splitlines() if (out / "steps.tsv").is_file() else []
    if steps:
        lines += ["| step | exit status | seconds |", "|---|---:|---:|"]
        lines += ["| " + " | ".join(s.split("\t")) + " |" for s in steps[1:]]
        lines += ["", "Exit status 124: stopped at the step's time limit; its finished epochs are "
                  "reported.", ""]
    lines += ["### The `fast` recipe, and the comparisons that use it", "",
              "`anode train --recipe fast` and `anode compare --recipe fast` (seed 0; ResNet family: "
              "Euler N_t = 2, SqueezeNext family: midpoint N_t = 2, as in the paper). All runs of the "
              "table trained at the same time on the one GPU, so their times are upper bounds of a "
              "run alone. Accuracy after the last finished epoch, on all 10,000 test images when "
              "the run finished.", "",
              "| run | epochs done / planned | test acc. (%) | final train loss | training (min) | "
              "with evaluation (min) | images/s (later half) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [_run_row(label, out / folder) for label, folder in RUNS]
    lines.append("")
    for family, title in (("resnet", "ResNet family"), ("sqnxt", "SqueezeNext family")):
        table = out / f"compare-{family}" / "compare_table.md"
        if table.is_file():
            lines += [f"#### {title}: `anode compare` report", "", table.read_text().strip(), ""]
    models = out / "models" / "models_results.md"
    if models.is_file():
        lines += ["### Training-step throughput (`anode bench models`)", "", models.read_text().strip(), ""]
    plots = _copy_plots(out)
    if plots:
        lines += ["### Plots", ""] + [f"![{name}]({link})" for name, link in plots] + [""]
    (out / "results_gpu.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results_gpu.md'} and {len(plots)} plots in {out / 'img' / 'gpu'}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) == 3 else "gpu")
