"""Data: loaders for local files, the medical abstracts layout, and the synthetic clinical-note corpus."""
from .loaders import (
    TextClassificationData,
    load_medical_abstracts,
    load_text_classification,
    split_protocol,
    stratified_split,
)

__all__ = ["TextClassificationData", "load_text_classification", "load_medical_abstracts", "stratified_split",
           "split_protocol"]
