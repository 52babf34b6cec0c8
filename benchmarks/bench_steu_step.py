"""One STEU unlearning step (only K embedding rows + the classifier head train: RowSparseAdamW) vs one full
fine-tuning step (every parameter, torch.optim.AdamW) on the same BERT model and batch, same run; the
optimizer-state bytes of both are recorded. performance.md targets (BERT-base, batch 32 x 512, GPU):
STEU step <= 0.7x the full step's time, optimizer state <= 0.5 % of AdamW's bytes.

CI size: a 4-layer, 256-wide BERT, batch 8 x 128 on the CPU. Full size (STEU_BENCH_SIZES=full): BERT-base
(12 layers, 768 wide, V=30522, randomly initialised: no download), batch 32 x 512, K=256 rows, 6 labels.
"""
from __future__ import annotations

import pytest
import torch
from conftest import cached, full_sizes, run, tiny_sizes

from steu_ext import RowSparseAdamW
from steu_ext.methods.steu import steu_param_groups

# (layers, hidden, heads, vocab, batch, length, K, labels)
SIZES = ([(12, 768, 12, 30522, 32, 512, 256, 6)] if full_sizes()
         else [(1, 64, 2, 2000, 2, 16, 16, 6)] if tiny_sizes() else [(4, 256, 4, 30522, 8, 128, 256, 6)])
PROVIDERS = ["stock:full_finetune_adamw", "ours:steu_step"]


@cached
def make_batch(L, H, A, V, B, T, K, C, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (B, T), generator=g).to(device)
    labels = (torch.rand(B, C, generator=g) < 0.3).float().to(device)
    rows = torch.randperm(V - 1000, generator=g)[:K].add(1000).to(device)
    return ids, labels, rows


def _model(L, H, A, V, C, device):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                     intermediate_size=4 * H, num_labels=C, problem_type="multi_label_classification",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).to(device).train()


def _state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "L{}_H{}_V{}_B{}x{}_K{}".format(s[0], s[1], s[3], s[4],
                                                                                     s[5], s[6]))
def test_steu_step(benchmark, recorder, device, size, provider):
    L, H, A, V, B, T, K, C = size
    ids, labels, rows = make_batch(*size, device)
    model = _model(L, H, A, V, C, device)
    n_params = sum(p.numel() for p in model.parameters())
    if provider == "stock:full_finetune_adamw":
        fused = True if device.startswith("cuda") else None
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    else:
        head = {n: p for n, p in model.named_parameters() if n.startswith("classifier.")}
        groups = steu_param_groups(model, "bert.embeddings.word_embeddings.weight", rows, head, lr=1e-3,
                                   head_lr=1e-3)
        opt = RowSparseAdamW(groups, lr=1e-3, validate=False)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(input_ids=ids).logits, labels).backward()
        opt.step()

    step()  # state allocated
    state = _state_bytes(opt)
    slow = not device.startswith("cuda")
    run(benchmark, recorder, step, op="steu_step", provider=provider,
        size="L{}_H{}_V{}_B{}x{}_K{}".format(L, H, V, B, T, K), inner=1 if slow else 5,
        rounds=3 if slow else 9, extra={"optimizer_state_bytes": state, "model_params": n_params,
                                        "optimizer_state_pct_of_adamw": 100 * state / (2 * n_params * 4)})
