"""Experiment protocols (offline, CPU-sized): :mod:`steu_ext.experiments.hds_protocol`."""
