"""The recorded adversarial scorecard on the bundled medical abstracts corpus: mean ± sd over seeds.

    python benchmarks/scorecard_medical_abstracts.py            # 3 seeds x 2 target classes, ~3 h on 2 cores

Protocol (issue #12): per seed (= data split + fine-tuning + unlearning seed) the documents are split,
stratified, into train (capped at --max-train-docs) / probe / test; the offline MiniLM is fine-tuned **end
to end** on the training split; every method starts from that model; the gold standard (``retrain``) is the
same fine-tuning from the same pretrained base without the target class's documents. Reported per method:
forget / retain F1, linear-probe recovery (logistic regression on frozen mean-pooled and [CLS] features of
the probe split, scored on the test split), the relearning attack, loss-based MIA and the exact number of
modified parameters. Fine-tuned originals and gold standards are cached (weights only) in --cache-dir.

The STEU settings are the library defaults, chosen on development seed 100 (never on the seeds reported
here; the sweep is in ``benchmarks/results/steu_objective_sweep.md``).

Each (target, seed) report is kept in --work and reused by a later call with the same settings, so the
scorecard can be built one piece at a time (``--targets neoplasms --seeds 0``) and aggregated at the end.

Writes ``benchmarks/results/scorecard_medical_abstracts.{json,md}`` and
``scorecard_medical_abstracts_probe_vs_retain.png``; the per-seed reports go to --work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

from steu_ext import datasets
from steu_ext.data import load_medical_abstracts
from steu_ext.eval.probe import ProbeConfig
from steu_ext.eval.relearn import RelearnConfig
from steu_ext.experiments.compare import run_scorecard
from steu_ext.methods.steu import STEUConfig

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = "steu,steu_paper,bias_suppression,logit_masking,retrain"
# Chosen on development seed 100 before any reported run: the two classes the fine-tuned original learns
# (held-out F1 >= 0.5) and where the gold standard's probe F1 sits clearly below the original's (0.55 vs
# 0.71 for neoplasms, 0.39 vs 0.63 for cardiovascular diseases); on the other three classes the original
# barely learns the class (F1 0.08-0.44), so there is little to forget and nothing to measure.
TARGETS = "neoplasms,cardiovascular diseases"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(datasets.path("medical_abstracts")))
    ap.add_argument("--targets", default=TARGETS, help="comma-separated class names")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--max-train-docs", type=int, default=1000)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--probe-fraction", type=float, default=0.14)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--finetune-lr", type=float, default=3e-4)
    ap.add_argument("--relearn-steps", type=int, default=24)
    ap.add_argument("--relearn-eval-every", type=int, default=4)
    ap.add_argument("--relearn-eval-docs", type=int, default=200)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/steu_ext/scorecard"))
    ap.add_argument("--work", default="/tmp/steu_scorecard_medical_abstracts")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--stem", default="scorecard_medical_abstracts")
    ap.add_argument("--no-reuse", action="store_true",
                    help="rerun every (target, seed) even when --work holds its report with the same settings")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = load_medical_abstracts(a.data)
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    extra = {
        "command": "python benchmarks/scorecard_medical_abstracts.py " + " ".join(sys.argv[1:]),
        "protocol": {"documents": len(data), "max_train_docs": a.max_train_docs, "test_fraction": a.test_fraction,
                     "probe_fraction": a.probe_fraction, "max_length": a.max_length,
                     "finetune": {"mode": "full", "epochs": a.finetune_epochs, "lr": a.finetune_lr,
                                  "schedule": "AdamW, weight decay 0.01, linear warm-up 10 % then linear decay; "
                                              "head bias initialised at the class priors"},
                     "torch_threads": torch.get_num_threads()},
    }
    res = run_scorecard(
        data, a.targets.split(","), seeds=seeds, out_dir=a.work, stem="scorecard", extra=extra,
        methods=a.methods.split(","), finetune_mode="full", finetune_epochs=a.finetune_epochs,
        finetune_lr=a.finetune_lr, test_fraction=a.test_fraction, probe_fraction=a.probe_fraction,
        max_train_docs=a.max_train_docs, cache_dir=a.cache_dir, progress=False, reuse=not a.no_reuse,
        config=STEUConfig(max_length=a.max_length),
        probe_config=ProbeConfig(seed=0),
        relearn_config=RelearnConfig(steps=a.relearn_steps, eval_every=a.relearn_eval_every,
                                     max_eval_docs=a.relearn_eval_docs, seed=0),
    )
    extra["wall_seconds"] = time.perf_counter() - t0
    from steu_ext.eval.scorecard import write_seed_scorecard

    paths = write_seed_scorecard(a.results, res["by_target"], extra=extra, stem=a.stem)
    with open(paths["md"]) as f:
        print(f.read())
    print("\n".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
