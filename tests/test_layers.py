"""The package's layers, read from the source: every module's imports of other steu_ext modules (absolute and
relative, at module level and inside functions) point to its own layer or a lower one.

    core (ops, reference, triton, optim, _backend, _build, _validate, _outdir, ...)
      < modeling < data < methods < eval < experiments < integrations < cli

``modeling`` (model helpers: encoders, labels, causal-LM scoring, loading, parameter snapshots) is below
``data`` because ``data.corpus_pmi`` resolves class names with ``modeling.labels``; ``eval`` sits above
``methods`` (it evaluates their results and holds HDS's stopping rules).

Compatibility shims at old paths that now point upward (``methods.experiment``, ``methods.compare``,
``data.synthetic`` and the moved names of ``methods.hds``) resolve their targets lazily (PEP 562
``__getattr__`` with the module name as a string), so they contain no upward import statement;
:data:`SHIMS` lists them and :func:`test_shims_are_lazy` checks that importing them imports no upper layer.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PKG = Path(__file__).resolve().parents[1] / "steu_ext"

CORE = ("steu_ext", "steu_ext._backend", "steu_ext._build", "steu_ext._fsutil", "steu_ext._outdir",
        "steu_ext._progress", "steu_ext._validate", "steu_ext.build", "steu_ext.env_report", "steu_ext.ops",
        "steu_ext.reference", "steu_ext.triton", "steu_ext.optim", "steu_ext.datasets")
# lowest first; a module may import its own layer and any lower one
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("core", CORE),
    ("modeling", ("steu_ext.modeling",)),
    ("data", ("steu_ext.data",)),
    ("methods", ("steu_ext.methods",)),
    ("eval", ("steu_ext.eval",)),
    ("experiments", ("steu_ext.experiments",)),
    ("integrations", ("steu_ext.integrations",)),
    ("cli", ("steu_ext.cli",)),
]

# compatibility shims: old paths re-exporting what moved to a higher layer (lazily; excluded from the order)
SHIMS = {"steu_ext.methods.experiment", "steu_ext.methods.compare", "steu_ext.data.synthetic"}


def _module_name(path: Path) -> Tuple[str, bool]:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _modules() -> Dict[str, Tuple[Path, bool]]:
    return {name: (p, is_pkg) for p in sorted(PKG.rglob("*.py")) for name, is_pkg in [_module_name(p)]}


def _exists(name: str, known: Dict[str, Tuple[Path, bool]]) -> bool:
    return name in known


def imports_of(path: Path, name: str, is_pkg: bool, known) -> Set[str]:
    """steu_ext modules imported anywhere in ``path`` (``from X import y`` counts as ``X.y`` when that is a
    module, else as ``X``)."""
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "steu_ext")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "steu_ext":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if _exists(sub, known) else mod)
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            exact_only = p == "steu_ext"
            if module == p or (not exact_only and module.startswith(p + ".")):
                if len(p) > best:
                    best, rank = len(p), i
    if rank is None:
        raise LookupError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return rank


def violations() -> List[str]:
    known = _modules()
    bad = []
    for name, (path, is_pkg) in known.items():
        if name in SHIMS:
            continue
        mine = layer_of(name)
        for dep in sorted(imports_of(path, name, is_pkg, known)):
            theirs = layer_of(dep)
            if theirs > mine:
                bad.append(f"{name} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[theirs][0]})")
    return bad


def test_every_module_has_a_layer():
    for name in _modules():
        layer_of(name)


def test_imports_follow_the_layers():
    bad = violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_shims_are_listed_modules():
    known = _modules()
    assert SHIMS <= set(known), SHIMS - set(known)


def test_shims_are_lazy():
    """Importing the methods and data layers (shims included) imports nothing from eval/ or experiments/."""
    code = ("import sys\n"
            "import steu_ext.methods.hds, steu_ext.methods.steu, steu_ext.methods.baselines, steu_ext.methods._model\n"
            "import steu_ext.methods.experiment, steu_ext.methods.compare, steu_ext.data.synthetic\n"
            "import steu_ext.data.qa, steu_ext.data.corpus_pmi, steu_ext.modeling\n"
            "up = sorted(m for m in sys.modules if m.startswith(('steu_ext.eval', 'steu_ext.experiments',\n"
            "            'steu_ext.integrations', 'steu_ext.cli')))\n"
            "assert not up, up\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(PKG.parent))
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("old, new, names", [
    ("steu_ext.methods._model", "steu_ext.modeling.encoders",
     ["Encoded", "predict_logits", "predictions", "find_head", "is_multi_label", "embedding_param_name",
      "last_hidden", "pooled_features", "HEAD_MODULES"]),
    ("steu_ext.methods.experiment", "steu_ext.modeling.loading",
     ["load_classifier", "offline_minilm_path", "DEFAULT_MODEL"]),
    ("steu_ext.methods.experiment", "steu_ext.experiments.steu_demo", ["run_experiment", "summary_table", "probe_f1"]),
    ("steu_ext.methods.experiment", "steu_ext.experiments.tiny_models", ["tiny_bert"]),
    ("steu_ext.methods.compare", "steu_ext.experiments.compare",
     ["run_compare", "run_scorecard", "format_table", "METHODS", "FINETUNE_DEFAULTS", "MIN_LEARNED_F1"]),
    ("steu_ext.data.synthetic", "steu_ext.experiments.synthetic", ["generate_notes", "CATEGORIES"]),
    ("steu_ext.methods.hds", "steu_ext.eval.stopping", ["IndistinguishableStop", "ForgettingStop",
                                                        "forgetting_monitor"]),
    ("steu_ext.methods.hds", "steu_ext.experiments.tiny_models", ["tiny_causal_lm", "teach", "wordpiece_tokenizer"]),
    ("steu_ext.methods.hds", "steu_ext.eval.qa", ["accuracy"]),
    ("steu_ext.methods.steu", "steu_ext.modeling.labels", ["label_matrix", "resolve_target"]),
    ("steu_ext.eval.metrics", "steu_ext.modeling.params", ["snapshot"]),
    ("steu_ext.eval.qa", "steu_ext.modeling.causal_lm", ["encode_qa", "token_logprobs", "continuation_logprobs"]),
    ("steu_ext.eval.qa", "steu_ext.data.qa", ["prompt_of", "continuation_of"]),
    ("steu_ext.eval.report", "steu_ext._outdir", ["write_json"]),
    ("steu_ext.eval.report", "steu_ext.env_report", ["versions"]),
])
def test_old_paths_still_work(old, new, names):
    o, n = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(o, name) is getattr(n, name), f"{old}.{name}"
    with pytest.raises(AttributeError):
        getattr(o, "no_such_name")
