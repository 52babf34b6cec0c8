"""A fine-tuned sequence classifier for ``steu unlearn`` and ``steu evaluate``: loading it (with the checks on
its head and label set), putting data in its label order, and forget/retain F1."""
from __future__ import annotations

from typing import List, Optional

from ._common import BadInput, _check_model_path


def _load_trained(model_path: str, label_names: Optional[List[str]] = None):
    """A fine-tuned sequence classifier and its tokenizer; errors for a missing model, a model without a
    trained classification head, and a label set different from the data's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _check_model_path(model_path)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(model_path, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load a sequence classifier from {model_path!r}: {str(e).splitlines()[0]}") from None
    from ..modeling.encoders import find_head

    head = find_head(model)
    missing = set(info.get("missing_keys", ()))
    if any(n in missing for n in head):
        raise BadInput(f"{model_path} has no trained classification head (missing {sorted(missing & set(head))}); "
                       "fine-tune it first, or use `steu demo --model` which fine-tunes a head")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if label_names is not None:
        generic = all(str(n).startswith("LABEL_") for n in names)
        if (generic and len(names) != len(label_names)) or (not generic and names != list(label_names)):
            raise BadInput(f"the data's label set {list(label_names)} does not match the model's {names}")
        names = list(label_names)
    return model, AutoTokenizer.from_pretrained(model_path), names


def _encode_eval(tok, data, names, max_length):
    from ..modeling.encoders import Encoded
    from ..modeling.labels import label_matrix

    return Encoded(tok, data.text, label_matrix(data.labels, len(names)), max_length)


def _check_same_labels(data, names, what: str) -> None:
    if list(data.label_names) != list(names) and not set(data.label_names) <= set(names):
        raise BadInput(f"the {what} label set {data.label_names} does not match the model's {names}")


def _remap(data, names):
    """Re-index ``data``'s labels onto the model's label order."""
    idx = {n: i for i, n in enumerate(names)}
    data.labels = [[idx[data.label_names[y]] for y in ys] for ys in data.labels]
    data.label_names = list(names)
    return data


def _f1_report(model, enc, target, names, multi):
    from ..eval.metrics import per_class_f1, unlearning_f1
    from ..modeling.encoders import predict_logits, predictions

    pred = predictions(predict_logits(model, enc), multi)
    rep = unlearning_f1(per_class_f1(enc.labels, pred), target, names)
    # how often the target is true / predicted: the vacuity checks (steu_ext.eval.vacuity) need them
    rep["target_docs"] = int((enc.labels[:, target] > 0).sum())
    rep["target_predicted"] = int((pred[:, target] > 0).sum())
    return rep
