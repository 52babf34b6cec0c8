"""Compatibility shim: these helpers live in :mod:`steu_ext.modeling.encoders` (the model-helper layer below
the methods and the evaluation). ``from steu_ext.methods._model import ...`` keeps working."""
# compatibility shim: re-exports steu_ext.modeling.encoders (a lower layer, so a plain import)
from ..modeling.encoders import (  # noqa: F401
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
