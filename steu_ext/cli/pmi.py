"""``steu pmi``: stream a corpus, count document-level token statistics (resumable, torchrun-aware) and
list the top PMI tokens per class."""
from __future__ import annotations

import json
import os

from ._common import EXIT_OK, BadInput, _check_model_path, _data_args, _hds_device, _out_arg


def register(sub) -> None:
    """``steu pmi`` and its options."""
    p = sub.add_parser("pmi", help="document-level token statistics and top PMI tokens per class",
                       description="Streams CSV/TSV/JSONL/parquet (plain or .gz) of any size, a folder or glob of "
                                   "such shards, or an HF datasets folder (save_to_disk); resumable (re-run "
                                   "the same command after a crash); under torchrun the ranks share the input.")
    _data_args(p)
    p.add_argument("--format", default=None, choices=["csv", "tsv", "jsonl", "parquet", "arrow"],
                   help="input format (default: from the file extension)")
    p.add_argument("--model", required=True, help="model name or folder whose tokenizer to use")
    p.add_argument("--target", action="append", help="class name or index (repeatable; default: all)")
    p.add_argument("--labels", default=None, help="comma-separated class names in order (default: the labels "
                                                  "found while reading, sorted); other labels are an error")
    p.add_argument("--unknown-labels", default="error", choices=["error", "skip"],
                   help="a label outside --labels: stop with an error, or report and skip the record")
    p.add_argument("--on-malformed", default="skip", choices=["skip", "error"],
                   help="malformed or empty records: report (line numbers) and skip, or stop")
    p.add_argument("--k", type=int, default=256, help="top tokens per class to list")
    p.add_argument("--measure", default="fwpmi", choices=["fwpmi", "pmi", "ppmi", "npmi"], help="token score")
    p.add_argument("--alpha", type=float, default=0.0, help="add-alpha smoothing of the PMI estimates")
    p.add_argument("--min-count", type=int, default=1, help="ignore tokens in fewer documents than this")
    p.add_argument("--max-length", type=int, default=512, help="tokens per document (longer ones are cut)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes per rank (default: this rank's cores - 1; 0 = in-process)")
    p.add_argument("--block-size", "--batch-size", dest="block_size", type=int, default=512,
                   help="records per tokenization job (also the unit of sharding across ranks)")
    p.add_argument("--device", default="cpu", help="where to count: cpu or cuda")
    p.add_argument("--checkpoint-every", type=int, default=100_000, help="documents between checkpoints")
    p.add_argument("--checkpoint-seconds", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out and count afresh")
    p.add_argument("--counts-format", default="auto", choices=["auto", "dense", "sparse"],
                   help="dense [C, V] counts, sparse (memory grows with the nonzero class-token pairs: "
                        "thousands of labels, LLM vocabularies), or auto: dense while C x V x 8 bytes <= 1 GiB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _out_arg(p)
    p.set_defaults(func=cmd_pmi)


def _default_workers() -> int:
    """Tokenizer processes per rank: the cores this rank may use, less one for reading and counting."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return per_rank - 1 if per_rank >= 2 else 0


def _check_pmi_out(a, summary_file: str, checkpoint_dir: str) -> None:
    """`steu pmi --out`: refuse unsafe folders (see :mod:`steu_ext._outdir`); an existing folder must be one
    of ours (marker, summary or checkpoints) and, once finished, needs --overwrite."""
    from .._outdir import MARKER, check_output_dir

    out = a.out
    check_output_dir(out, True, [a.data, a.model], marker_files=(MARKER, summary_file, checkpoint_dir))
    if os.path.isdir(out) and os.path.exists(os.path.join(out, summary_file)) and not a.overwrite:
        raise BadInput(f"output folder {out} already exists (use --overwrite)")


def _prepare_pmi_out(out: str, overwrite: bool) -> None:
    """Empty an old folder of ours (with --overwrite) and (re)create ``out`` with our marker file."""
    import shutil

    from .._outdir import MARKER

    if overwrite and os.path.isdir(out) and os.listdir(out):
        shutil.rmtree(out)   # checked by _check_pmi_out: a folder steu wrote
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("written by steu_ext; `--overwrite` may replace this folder\n")


def _remove_if_unused(out: str) -> None:
    """Remove ``out`` if it holds nothing but our marker (and empty folders)."""
    import shutil

    from .._outdir import MARKER

    for root, _dirs, files in os.walk(out):
        if any(f != MARKER or root != out for f in files):
            return
    shutil.rmtree(out, ignore_errors=True)


def cmd_pmi(a) -> int:
    """Stream the corpus, count with checkpoints (resumable, torchrun-aware), write counts and tables."""
    from transformers import AutoTokenizer

    from ..data.corpus_pmi import CHECKPOINT_DIR, SUMMARY_FILE, init_distributed, precompute_pmi

    # cheap checks first: none of these may wait until the whole corpus has been counted
    if a.k < 1:
        raise BadInput(f"--k must be >= 1, got {a.k}")
    if a.min_count < 0:
        raise BadInput(f"--min-count must be >= 0, got {a.min_count}")
    if a.alpha < 0:
        raise BadInput(f"--alpha must be >= 0, got {a.alpha}")
    _hds_device(a.device)
    _check_model_path(a.model)
    try:
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of {a.model!r}: {str(e).splitlines()[0]}") from None
    if a.k > len(tok):
        raise BadInput(f"k={a.k} is larger than the vocabulary ({len(tok)} tokens)")
    from ..data.stream import resolve_shards

    try:
        resolve_shards(a.data)
    except (OSError, ValueError) as e:
        raise BadInput(str(e)) from None
    out = a.out
    # Written in place (not via _output_dir) so that a killed run can resume from out/checkpoints;
    # summary.json is written last and marks a finished run.
    _check_pmi_out(a, SUMMARY_FILE, CHECKPOINT_DIR)
    rank, world, started = init_distributed(a.device)
    fresh = not os.path.exists(out)
    try:
        if rank == 0:
            _prepare_pmi_out(out, a.overwrite)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        labels = [s.strip() for s in a.labels.split(",") if s.strip()] if a.labels else None
        workers = _default_workers() if a.workers is None else a.workers
        cc = precompute_pmi(a.data, tok, out, targets=a.target, k=a.k, measure=a.measure, alpha=a.alpha,
                            min_count=a.min_count, resume=not a.no_resume, text_column=a.text_column,
                            label_column=a.label_column, label_names=labels, label_sep=a.label_sep, fmt=a.format,
                            max_length=a.max_length, workers=workers, block_size=a.block_size, device=a.device,
                            checkpoint_every=a.checkpoint_every, checkpoint_seconds=a.checkpoint_seconds,
                            unknown_labels=a.unknown_labels, on_malformed=a.on_malformed, progress=not a.quiet,
                            counts_format=a.counts_format,
                            extra_summary={"tokenizer_name": a.model, "workers_per_rank": workers})
    except BaseException:
        if rank == 0 and fresh:
            _remove_if_unused(out)   # a run that stopped before any checkpoint leaves no folder behind
        raise
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out, SUMMARY_FILE)) as f:
            tables = json.load(f)["top_tokens"]
        for name, rows in tables.items():
            print(f"{name}: " + ", ".join(f"{r['token']} ({r['score']:.2f})" for r in rows[:10]))
        s = cc.seconds
        print(f"{cc.n_docs:,} documents, {cc.n_tokens:,} tokens in {s['wall']:.1f} s ({s['docs_per_s']:,.0f} docs/s, "
              f"{s['tokens_per_s']:,.0f} tokens/s, {world} rank(s) x {workers} tokenizer workers); "
              f"{cc.n_skipped} records skipped")
        sm = cc.summary()
        print(f"{sm['counts_format']} counts: {sm['nnz']:,} nonzero class-token pairs of "
              f"{len(cc.label_names):,} x {cc.counter.num_tokens:,}")
        print(f"counts and tables written to {out}")
    return EXIT_OK
