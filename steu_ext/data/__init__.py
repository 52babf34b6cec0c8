"""Data: loaders for local files and the medical abstracts layout, streaming readers, corpus PMI counts, QA
items and their text format, concept hierarchies. (The synthetic clinical-note corpus of the demo is in
:mod:`steu_ext.experiments.synthetic`; ``steu_ext.data.synthetic`` still resolves to it.)"""
from .loaders import (
    TextClassificationData,
    load_medical_abstracts,
    load_text_classification,
    split_protocol,
    stratified_split,
)

__all__ = ["TextClassificationData", "load_text_classification", "load_medical_abstracts", "stratified_split",
           "split_protocol"]
