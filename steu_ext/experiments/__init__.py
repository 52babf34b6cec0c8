"""Experiment protocols and their tooling (offline, CPU-sized), above the methods and the evaluation:

* :mod:`~steu_ext.experiments.steu_demo`: one STEU experiment end to end (``steu demo``).
* :mod:`~steu_ext.experiments.compare`: STEU against its ablations and the baselines, with the adversarial
  scorecard (``steu compare``).
* :mod:`~steu_ext.experiments.hds_protocol`: the offline HDS protocol with a gold standard.
* :mod:`~steu_ext.experiments.tiny_models`: small random models (``tiny_bert``, ``tiny_causal_lm``,
  ``teach``) so the protocols run without a download.
* :mod:`~steu_ext.experiments.synthetic`: the synthetic clinical-note corpus of the demo.
"""
