"""The unlearning methods: :mod:`~steu_ext.methods.steu` (class-level, for sequence classifiers),
:mod:`~steu_ext.methods.hds` (knowledge domains, for causal LMs), the edits they produce
(:mod:`~steu_ext.methods.edit`, :mod:`~steu_ext.methods.edit_stack`), the baselines they are compared with
(:mod:`~steu_ext.methods.baselines`) and classifier fine-tuning (:mod:`~steu_ext.methods.finetune`, also the
``retrain`` gold standard). They build on :mod:`steu_ext.modeling` and never import :mod:`steu_ext.eval`
or :mod:`steu_ext.experiments` (``tests/test_layers.py``)."""
