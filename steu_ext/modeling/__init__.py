"""The model-helper layer: what the methods, the evaluation and the integrations share about models. It sits
above the ops and below ``data``, ``methods``, ``eval``, ``experiments``, ``integrations`` and the CLI, and
imports none of them (``tests/test_layers.py`` checks the order).

* :mod:`~steu_ext.modeling.encoders`: HF sequence classifiers — the embedding table
  (:func:`embedding_param_name`), the head and its output layer (:func:`find_head`, :func:`output_layer`),
  tokenized text in padded batches (:class:`Encoded`), logits and 0/1 predictions (:func:`predict_logits`,
  :func:`predictions`), pooled last-layer features (:func:`pooled_features`, :func:`last_hidden`).
* :mod:`~steu_ext.modeling.labels`: classes by name or position (:func:`resolve_target`) and ``[N, C]``
  label matrices from what users pass (:func:`label_matrix`).
* :mod:`~steu_ext.modeling.loading`: a pretrained classifier with a head for the user's labels
  (:func:`load_classifier`; :data:`DEFAULT_MODEL` is the offline MiniLM encoder).
* :mod:`~steu_ext.modeling.causal_lm`: token scoring of causal LMs (:func:`encode_qa`,
  :func:`token_logprobs`, :func:`continuation_logprobs`, the padding id :func:`pad_id`).
* :mod:`~steu_ext.modeling.params`: parameter snapshots for exact before/after comparisons
  (:func:`snapshot`); tensors read from a safetensors file into aligned memory of their own
  (:func:`read_tensor`).

Importing this package does not import transformers.
"""
from .causal_lm import continuation_logprobs, encode_qa, pad_id, token_logprobs
from .encoders import (
    HEAD_MODULES,
    Encoded,
    embedding_param_name,
    find_head,
    is_multi_label,
    last_hidden,
    output_layer,
    pooled_features,
    predict_logits,
    predictions,
)
from .labels import label_matrix, resolve_target
from .loading import DEFAULT_MODEL, load_classifier, offline_minilm_path
from .params import read_tensor, snapshot

__all__ = ["HEAD_MODULES", "Encoded", "embedding_param_name", "find_head", "is_multi_label", "last_hidden",
           "output_layer", "pooled_features", "predict_logits", "predictions", "label_matrix", "resolve_target",
           "DEFAULT_MODEL", "load_classifier", "offline_minilm_path", "encode_qa", "token_logprobs",
           "continuation_logprobs", "pad_id", "snapshot", "read_tensor"]
