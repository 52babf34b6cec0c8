"""``steu compare``: STEU, its ablations and baselines on one dataset; one table and a scorecard."""
from __future__ import annotations

import os

from ._common import (
    EXIT_OK,
    BadInput,
    _check_out,
    _config,
    _data_args,
    _load_data,
    _out_arg,
    _output_dir,
    _steu_args,
)


def register(sub) -> None:
    """``steu compare`` and its options."""
    p = sub.add_parser("compare", help="run STEU, its ablations and baselines on one dataset; one table")
    _data_args(p, required=False)
    p.add_argument("--target", default=None, help="class to forget, by name or index (default: the first)")
    p.add_argument("--model", default=None, help="HF model name or folder to fine-tune (default: the offline "
                                                 "MiniLM encoder if installed, else a small random BERT)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--n-docs", type=int, default=1200, help="synthetic corpus size when --data is omitted")
    _steu_args(p)
    p.set_defaults(epochs=3)
    p.add_argument("--top-layers", type=int, default=3, help="encoder layers the layer-based baselines train")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (each = data split + fine-tuning + unlearning seed): one run per "
                        "seed and a mean ± sd scorecard (default: --seed only)")
    p.add_argument("--finetune-mode", default="full", choices=["full", "head"],
                   help="fine-tune every parameter (as deployed models are) or only the head on a frozen "
                        "encoder (fast, but then the probe cannot tell the models apart)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default: 4 (full) / 30 (head)")
    p.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-4 (full) / 1e-2 (head)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of the documents held out for F1")
    p.add_argument("--probe-fraction", type=float, default=0.15,
                   help="share of the documents held out as the probe's labelled split (never trained on)")
    p.add_argument("--max-docs", type=int, default=None, help="use a stratified subset of this many documents")
    p.add_argument("--max-train-docs", type=int, default=None, help="cap on the training split (CPU budgets)")
    p.add_argument("--cache-dir", default=None,
                   help="store and reuse the fine-tuned original and gold standard here (weights only)")
    g = p.add_argument_group("adversarial evaluation (scorecard)")
    g.add_argument("--no-probe", action="store_true", help="skip the linear-probe recovery")
    g.add_argument("--probe-pooling", default="mean", choices=["cls", "mean", "pooled"],
                   help="feature reported as probe F1/AUROC (all three are computed)")
    g.add_argument("--probe-train-docs", type=int, default=None, help="cap on the probe's training documents")
    g.add_argument("--no-relearn", action="store_true", help="skip the relearning attack (the slowest part)")
    g.add_argument("--relearn-steps", type=int, default=24, help="relearning attack step budget")
    g.add_argument("--relearn-docs", type=int, default=32,
                   help="labelled target-class documents the attacker holds (as many others are mixed in)")
    g.add_argument("--relearn-params", default="all", choices=["all", "head"],
                   help="what the relearning attacker fine-tunes")
    g.add_argument("--relearn-eval-every", type=int, default=2, help="attack steps between F1 checks")
    g.add_argument("--relearn-eval-docs", type=int, default=200, help="held-out documents scored per check")
    g.add_argument("--no-inspect", action="store_true", help="skip the STEU edit inspection")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(p, default="steu_compare")
    p.set_defaults(func=cmd_compare)


def cmd_compare(a) -> int:
    from ..experiments.compare import METHODS, format_table, run_compare
    from ..modeling.loading import DEFAULT_MODEL

    _check_out(a.out, a.overwrite, [a.data, a.model, a.cache_dir])
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if a.data:
        data = _load_data(a)
    else:
        from ..data.loaders import TextClassificationData
        from ..experiments.synthetic import generate_notes

        g = generate_notes(a.n_docs, seed=a.seed)
        data = TextClassificationData(g["text"], g["labels"], g["label_names"], True)
    from ..eval.probe import ProbeConfig
    from ..eval.relearn import RelearnConfig
    from ..eval.scorecard import format_scorecard

    pcfg = ProbeConfig(pooling=a.probe_pooling, max_train_docs=a.probe_train_docs, seed=a.seed)
    rcfg = RelearnConfig(steps=a.relearn_steps, target_docs=a.relearn_docs, other_docs=a.relearn_docs,
                         params=a.relearn_params, eval_every=a.relearn_eval_every,
                         max_eval_docs=a.relearn_eval_docs, seed=a.seed)
    if a.max_docs is not None:
        from ..data.loaders import stratified_split

        if a.max_docs < 2:
            raise BadInput(f"--max-docs must be >= 2, got {a.max_docs}")
        if a.max_docs < len(data):
            _, sub = stratified_split(data.labels, a.max_docs / len(data), seed=a.seed)
            data = data.subset(sub)
    seeds = None
    if a.seeds:
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            raise BadInput(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise BadInput(f"--seeds must be distinct integers, got {a.seeds!r}")
    kw = dict(methods=methods, model=a.model or DEFAULT_MODEL, config=_config(a), test_fraction=a.test_fraction,
              finetune_epochs=a.finetune_epochs, finetune_mode=a.finetune_mode, finetune_lr=a.finetune_lr,
              probe_fraction=a.probe_fraction if not a.no_probe else 0.0, max_train_docs=a.max_train_docs,
              cache_dir=a.cache_dir, top_layers=a.top_layers, progress=not a.quiet, probe=not a.no_probe,
              relearn=not a.no_relearn, inspect_edits=not a.no_inspect, probe_config=pcfg, relearn_config=rcfg)
    from ..modeling.labels import resolve_target

    # names before positions (classes named "1".."5"), ambiguity refused: resolved here, passed as a position
    target = resolve_target(a.target, data.label_names) if a.target is not None else 0
    if seeds is not None:
        from ..experiments.compare import run_scorecard

        with _output_dir(a.out, a.overwrite, [a.data, a.model, a.cache_dir]) as tmp:
            res = run_scorecard(data, [target], seeds=seeds, out_dir=tmp, **kw)
        with open(os.path.join(a.out, "scorecard.md")) as f:
            print(f.read())
        print(f"scorecard: {a.out}/scorecard.md (+ .json, scorecard_probe_vs_retain.png); per seed: "
              f"{a.out}/{next(iter(res['by_target'])).replace(os.sep, '_')}/seed_N/")
        return EXIT_OK
    with _output_dir(a.out, a.overwrite, [a.data, a.model, a.cache_dir]) as tmp:
        report = run_compare(data, target, seed=a.seed, out_dir=tmp, **kw)
    print(format_table(report))
    print("\nscorecard:\n" + format_scorecard(report))
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    print(f"\nreport: {a.out}/report.json, scorecard: {a.out}/scorecard.md")
    return EXIT_OK
