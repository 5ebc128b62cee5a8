"""Train and compare every model of params.yaml on REAL street photos (Clothing Co-Parsing), and print the table.

Usage: python benchmarks/bench_ccp_models.py [--ccp ../shared/datasets/ccp] [--work-dir /tmp/stylegraph-ccp]
                                             [--top-k 10] [--drop-tags skin,hair] [--backbone tf_efficientnet_lite2]
                                             [--image-size 260] [--models linear,csra] [--seeds 3] [--reuse-features]

The CCP photos go through the project's own stages (benchmarks/ccp.py: importer, split,
graph, features), then the train and evaluate stages with the `features`, `train`,
`models`, `select` and `evaluate` sections of params.yaml. Every model trains under --seeds
seeds (train.seed, +1, ...), the select stage scores the heads out of fold (CCP has no
near-duplicate pairs listed), and each is evaluated on the test split; the summary gives
mean ± sd over seeds, each model's mAP minus the baseline's (evaluate.baseline) with the
first seed's paired bootstrap interval, the expert clicks of its pre-annotations, and per
seed the model the validation split alone and the out-of-fold selection choose, with their
test mAP against the best model's. Numbers are printed, never asserted; the full reports
land in the work dir.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from ccp import add_arguments, no_near_duplicates, prepare, timing_table

from training import evaluate, select, train
from training.settings import load_model_specs

SUMMARY_COLUMNS = {
    "val_mAP": "val mAP",
    "top1_any": "T1 any",
    "top2_all": "T2 all",
    "topn_all": "Tn all",
    "mAP": "mAP",
    "CF1_val_thr": "CF1 (thr)",
    "clicks_ratio": "clicks, % of empty form",
    "clicks_ratio_f1_rule": "clicks, F1 rule",
}


def seed_summary(runs: list[dict]) -> str:
    """Markdown: each model's metrics as mean ± sd over the training seeds, and its mAP minus the baseline's per
    seed."""
    first, n = runs[0], len(runs)
    lines = [f"## {n} training seeds: mean ± sd (test split, {first['n_images']} images; "
             "val mAP on the validation split)",
             "",
             "| model | " + " | ".join(SUMMARY_COLUMNS.values())
             + f" | Δ mAP vs {first['baseline']} (mean ± sd; seed 1's paired 95% interval) |",
             "|---|" + "---|" * (len(SUMMARY_COLUMNS) + 1)]  # fmt: skip
    for name in first["models"]:
        values = {key: [100 * run["models"][name][key] for run in runs] for key in SUMMARY_COLUMNS}
        cells = [f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if n > 1 else 0:.2f}" for v in values.values()]
        if name == first["baseline"]:
            cells.append("—")
        else:
            gaps, one = [100 * run["models"][name]["mAP_minus_baseline"] for run in runs], first["models"][name]
            cells.append(
                f"{np.mean(gaps):+.2f} ± {np.std(gaps, ddof=1) if n > 1 else 0:.2f} "
                f"([{100 * one['mAP_minus_baseline_ci_low']:+.2f}, {100 * one['mAP_minus_baseline_ci_high']:+.2f}])"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | chosen on validation (test mAP) | chosen out of fold (test mAP) | best on test (test mAP) "
              "| out-of-fold choice minus best |", "|---|---|---|---|---|"]  # fmt: skip
    for seed, run in enumerate(runs, 1):
        test = {name: 100 * m["mAP"] for name, m in run["models"].items()}
        best, val, oof = max(test, key=lambda n: test[n]), run["validation_choice"], run["chosen_model"]
        lines.append(f"| {seed} | {val} ({test[val]:.2f}) | {oof} ({test[oof]:.2f}) | {best} ({test[best]:.2f}) "
                     f"| {test[oof] - test[best]:+.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "/tmp/stylegraph-ccp")
    parser.add_argument(
        "--seeds", type=int, default=3, help="train every model under this many seeds (train.seed, +1, ...): mean ± sd"
    )
    args = parser.parse_args()
    ccp = prepare(args, args.seeds, "bench_ccp_models")
    runs = []
    for seed in ccp.seeds:
        out = ccp.work / f"seed-{seed}"
        for model in load_model_specs(ccp.params[seed]):
            ccp.timed(f"train@{model}", train.main, ccp.train_argv(model, seed, out))
        pairs = no_near_duplicates(out)
        ccp.timed("select", select.main, [*ccp.common[:4], "--features", str(ccp.data["features.npz"]),
                                          "--near-duplicates", str(pairs), "--models-dir", str(out / "models"),
                                          "--out-of-fold", str(out / "out_of_fold.parquet"),
                                          "--out", str(out / "selection.json"),
                                          "--metrics", str(out / "selection_metrics.json"),
                                          "--params", str(ccp.params[seed])])  # fmt: skip
        ccp.timed("evaluate", evaluate.main, [*ccp.common, "--features", str(ccp.data["features.npz"]),
                                              "--models-dir", str(out / "models"),
                                              "--selection", str(out / "selection.json"),
                                              "--report", str(out / "evaluation.md"),
                                              "--metrics", str(out / "evaluation.json"),
                                              "--params", str(ccp.params[seed])])  # fmt: skip
        runs.append(json.loads((out / "evaluation.json").read_text(encoding="utf-8")))
    report = (ccp.work / f"seed-{ccp.seeds[0]}" / "evaluation.md").read_text(encoding="utf-8")
    summary = seed_summary(runs)
    (ccp.work / "summary.md").write_text(summary, encoding="utf-8")
    print(f"\n# First seed ({ccp.seeds[0]})\n\n" + report.split("## Top-2 all-recall per label")[0])
    print(summary)
    print(timing_table(ccp.timings, f" (all {len(ccp.seeds)} seeds)"))
    print(f"\nfull reports: {ccp.work}/seed-*/evaluation.md; summary: {ccp.work / 'summary.md'}")


if __name__ == "__main__":
    main()
