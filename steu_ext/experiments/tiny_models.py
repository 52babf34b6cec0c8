"""Small randomly initialised models for the offline protocols (no download): :func:`tiny_bert`, a small
BERT classifier with a WordPiece tokenizer trained on the texts (``steu demo`` / ``steu compare`` without the
offline MiniLM encoder, and the tests); :func:`tiny_causal_lm`, a small Llama with a deterministic
:func:`wordpiece_tokenizer`, and :func:`teach`, which teaches it the QA pairs that HDS then unlearns
(:mod:`steu_ext.experiments.hds_protocol`)."""
from __future__ import annotations

import collections
import logging
import random
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.qa import QAItem, continuation_of, prompt_of
from ..eval.qa import accuracy
from ..methods.hds import collate
from ..modeling import loading
from ..modeling.causal_lm import encode_qa, pad_id, token_logprobs

__all__ = ["tiny_bert", "wordpiece_tokenizer", "tiny_causal_lm", "teach"]


def tiny_bert(texts: Sequence[str], num_labels: int, multi_label: bool, seed: int = 0,
              vocab_size: int = 2000) -> Tuple[Any, Any]:
    """A small randomly initialised BERT with a WordPiece tokenizer trained on ``texts`` (no download)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=512, num_labels=num_labels,
                     problem_type="multi_label_classification" if multi_label else "single_label_classification")
    return BertForSequenceClassification(cfg), tok


def wordpiece_tokenizer(texts: Sequence[str], *, vocab_size: int = 3000, min_frequency: int = 2):
    """A lower-case BERT-style WordPiece fast tokenizer whose vocabulary is built deterministically from
    ``texts``: every character (alone and as ``##`` continuation) plus the most frequent whole words (ties
    by spelling); rarer words split into shorter pieces. (The ``tokenizers`` trainers break frequency ties
    differently from run to run, which would change the vocabulary between processes.) It adds [CLS]
    (acting as BOS) and [SEP]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("need texts to build the tokenizer")
    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Dict[str, int] = collections.Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in counts for c in w})
    vocab = specials + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size or n < min_frequency:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    ids = {w: i for i, w in enumerate(vocab)}
    tk = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer, tk.pre_tokenizer = norm, pre
    tk.post_processor = processors.BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"]))
    from tokenizers import decoders
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_causal_lm(texts: Sequence[str], *, seed: int = 0, vocab_size: int = 3000, hidden: int = 64,
                   layers: int = 2, heads: int = 4, max_positions: int = 256):
    """``(model, tokenizer)``: a randomly initialised Llama and :func:`wordpiece_tokenizer` of ``texts``
    (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = wordpiece_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg), tok


def teach(model: nn.Module, tokenizer, items: Sequence[QAItem], *, epochs: int = 200, lr: float = 3e-3,
          batch_size: int = 32, max_length: int = 96, long_answer: bool = False,
          target_acc: Optional[float] = 0.95, check_every: int = 10, seed: int = 0) -> Dict[str, Any]:
    """Teach ``model`` (in place) the items' training texts with next-token cross-entropy on every token
    until its multiple-choice accuracy on them reaches ``target_acc`` (checked every ``check_every``
    epochs) or ``epochs`` run out (``target_acc=None``: exactly ``epochs`` epochs, e.g. to repeat another
    run's schedule). Returns ``{"accuracy", "epochs", "seconds"}``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pad = pad_id(tokenizer)
    seqs = [encode_qa(tokenizer, prompt_of(it), continuation_of(it, long_answer=long_answer),
                      max_length)["input_ids"] for it in items]
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    acc, ep = 0.0, 0
    for ep in range(1, epochs + 1):
        model.train()
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            b = collate([{"input_ids": seqs[i], "fw": torch.zeros(len(seqs[i])),
                          "kw": torch.zeros(len(seqs[i]))} for i in order[s:s + batch_size]], pad)
            ids, att = b["input_ids"].to(device), b["attention_mask"].to(device)
            lp = token_logprobs(model, ids, att)
            loss = -(lp * att[:, 1:]).sum() / att[:, 1:].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ep == epochs or (target_acc is not None and ep % check_every == 0):
            acc = accuracy(model, tokenizer, items, max_length=max_length)
            if target_acc is not None and acc >= target_acc:
                break
    model.eval()
    return {"accuracy": acc, "epochs": ep, "seconds": time.perf_counter() - t0}


def classifier_or_tiny(model: str, texts: Sequence[str], label_names: Sequence[str], multi_label: bool,
                       seed: int) -> Tuple[nn.Module, Any, bool, str]:
    """``(model, tokenizer, new_head, description)`` for the demo and compare protocols: ``model`` through
    :func:`~steu_ext.modeling.loading.load_classifier`; when ``model`` is the default offline MiniLM and that
    package is not installed, a small random BERT with a WordPiece tokenizer trained on ``texts`` (warned)."""
    if model == loading.DEFAULT_MODEL and loading.offline_minilm_path() is None:
        logging.getLogger("steu_ext").warning("%s is not installed: using a small randomly initialised BERT "
                                              "instead", loading.DEFAULT_MODEL)
        net, tok = tiny_bert(texts, len(label_names), multi_label, seed)
        return net, tok, True, "tiny random BERT (2 layers, 128 hidden; WordPiece tokenizer trained on the data)"
    net, tok, new_head = loading.load_classifier(model, label_names, multi_label, return_new_head=True)
    kind = "offline MiniLM-L6 encoder, pretrained" if model == loading.DEFAULT_MODEL else "pretrained"
    return net, tok, new_head, f"{model} ({kind})"
