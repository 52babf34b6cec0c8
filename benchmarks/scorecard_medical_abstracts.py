"""The recorded adversarial scorecard on the medical abstracts corpus (target: neoplasms).

    python benchmarks/scorecard_medical_abstracts.py --docs 800 --max-length 96 --seed 0

Fine-tunes the offline MiniLM once on a stratified subset, runs STEU, its ablations, the baselines, the
trivial baselines and the retrain gold standard, and writes
``benchmarks/results/scorecard_medical_abstracts.{json,md,png}`` (the full report goes to ``--work``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from steu_ext import datasets
from steu_ext.data import load_medical_abstracts, stratified_split
from steu_ext.eval.probe import ProbeConfig
from steu_ext.eval.relearn import RelearnConfig
from steu_ext.eval.scorecard import format_scorecard, write_scorecard
from steu_ext.methods.compare import run_compare
from steu_ext.methods.steu import STEUConfig

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(datasets.path("medical_abstracts")))
    ap.add_argument("--docs", type=int, default=800, help="stratified subset size (0 = all 2,888)")
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--relearn-steps", type=int, default=16)
    ap.add_argument("--relearn-eval-every", type=int, default=4)
    ap.add_argument("--relearn-eval-docs", type=int, default=100)
    ap.add_argument("--probe-train-docs", type=int, default=300)
    ap.add_argument("--work", default="/tmp/steu_scorecard_medical_abstracts")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = load_medical_abstracts(a.data)
    n_all = len(data)
    if a.docs and a.docs < n_all:
        _, sub = stratified_split(data.labels, a.docs / n_all, seed=a.seed)
        data = data.subset(sub)
    t0 = time.perf_counter()
    report = run_compare(
        data,
        "neoplasms",
        out_dir=a.work,
        seed=a.seed,
        finetune_epochs=30,
        top_layers=3,
        progress=False,
        config=STEUConfig(k=a.k, epochs=a.epochs, max_length=a.max_length, seed=a.seed),
        probe_config=ProbeConfig(max_train_docs=a.probe_train_docs, seed=a.seed),
        relearn_config=RelearnConfig(
            steps=a.relearn_steps,
            eval_every=a.relearn_eval_every,
            max_eval_docs=a.relearn_eval_docs,
            seed=a.seed,
        ),
    )
    extra = {
        "command": "python benchmarks/scorecard_medical_abstracts.py " + " ".join(sys.argv[1:]),
        "subset": {"documents": len(data), "of": n_all, "stratified_seed": a.seed},
        "wall_seconds": time.perf_counter() - t0,
    }
    paths = write_scorecard(a.results, report, extra=extra, stem="scorecard_medical_abstracts")
    print(format_scorecard(report))
    print("\n".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
