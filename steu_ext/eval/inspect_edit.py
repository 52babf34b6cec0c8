"""What did a STEU edit do to the vocabulary? Per edited token: how far its embedding row moved (L2,
relative L2, cosine between old and new) and its nearest vocabulary neighbours (cosine) before and after,
so a reviewer can see whether a row was nudged or turned into something else.

Neighbours *before* are searched in the original table, neighbours *after* in the edited table (every
edited row at its new value); the token itself is excluded from its own list.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..methods.edit import STEUEdit


def inspect_edit(
    edit: STEUEdit, original_table: torch.Tensor, tokenizer=None, *, top_n: int = 5, batch_size: int = 256
) -> Dict[str, Any]:
    """Per-row movement and neighbours of ``edit`` applied to ``original_table`` (``[V, D]``, the word
    embeddings before the edit; not modified). ``tokenizer`` turns ids into token strings (ids otherwise).

    Returns ``tokens`` (one dict per edited row, largest L2 movement first: ``id``, ``token``, ``l2``,
    ``relative_l2``, ``cosine``, ``neighbours_before``, ``neighbours_after``, ``neighbour_overlap``) and
    ``summary`` (rows, mean/median/max L2, mean cosine, mean neighbour overlap)."""
    if not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be an int >= 1, got {top_n!r}")
    table = torch.as_tensor(original_table).detach().float().cpu()
    if table.dim() != 2 or table.shape[1] != edit.new_rows.shape[1]:
        raise ValueError(
            f"original_table {tuple(table.shape)} does not match the edit's rows {tuple(edit.new_rows.shape)}"
        )
    ids = edit.row_ids.long().cpu()
    if ids.numel() and int(ids.max()) >= table.shape[0]:
        raise ValueError(f"the edit touches row {int(ids.max())} but the table has {table.shape[0]} rows")
    old_stored = edit.old_rows.float()
    if ids.numel() and not torch.equal(table[ids], old_stored):
        raise ValueError("original_table is not the table this edit was made from (the old rows differ)")
    k = min(top_n, table.shape[0] - 1)
    new = edit.new_rows.float()
    edited = table.clone()
    edited[ids] = new

    def unit(x):
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def neighbours(queries: torch.Tensor, tab: torch.Tensor) -> List[List[tuple]]:
        u_tab, out = unit(tab), []
        for s in range(0, len(queries), batch_size):
            q = ids[s : s + batch_size]
            sim = unit(queries[s : s + batch_size]) @ u_tab.T
            sim[torch.arange(len(q)), q] = -float("inf")  # not its own neighbour
            v, j = sim.topk(k, dim=1)
            out += [list(zip(jj.tolist(), vv.tolist())) for jj, vv in zip(j, v)]
        return out

    def name(i: int) -> str:
        return tokenizer.convert_ids_to_tokens(int(i)) if tokenizer is not None else str(int(i))

    before, after = neighbours(old_stored, table), neighbours(new, edited)
    diff = new - old_stored
    l2 = diff.norm(dim=1)
    rel = l2 / old_stored.norm(dim=1).clamp_min(1e-12)
    cos = (unit(old_stored) * unit(new)).sum(1)
    rows = []
    for r in range(len(ids)):
        nb = [j for j, _ in before[r]]
        na = [j for j, _ in after[r]]
        rows.append(
            {
                "id": int(ids[r]),
                "token": name(ids[r]),
                "l2": float(l2[r]),
                "relative_l2": float(rel[r]),
                "cosine": float(cos[r]),
                "neighbours_before": [{"token": name(j), "cosine": float(c)} for j, c in before[r]],
                "neighbours_after": [{"token": name(j), "cosine": float(c)} for j, c in after[r]],
                "neighbour_overlap": len(set(nb) & set(na)) / k,
            }
        )
    rows.sort(key=lambda x: -x["l2"])
    n = len(rows)
    summary = {"rows": n, "top_n": k}
    if n:
        summary.update(
            mean_l2=float(l2.mean()),
            median_l2=float(l2.median()),
            max_l2=float(l2.max()),
            mean_relative_l2=float(rel.mean()),
            mean_cosine=float(cos.mean()),
            min_cosine=float(cos.min()),
            mean_neighbour_overlap=sum(x["neighbour_overlap"] for x in rows) / n,
        )
    return {"summary": summary, "tokens": rows}


def format_edit_table(inspection: Dict[str, Any], limit: Optional[int] = 20, top_n: int = 3) -> str:
    """Markdown table of the ``limit`` rows that moved most: token, L2, cosine, neighbours before/after."""
    rows = inspection["tokens"][:limit] if limit is not None else inspection["tokens"]
    lines = [
        "| token | L2 moved | rel. L2 | cosine(old, new) | neighbours before | neighbours after |",
        "|---|---:|---:|---:|---|---|",
    ]

    def esc(t: str) -> str:
        return t.replace("|", "\\|").replace("`", "'")

    for r in rows:
        nb = ", ".join(esc(n["token"]) for n in r["neighbours_before"][:top_n])
        na = ", ".join(esc(n["token"]) for n in r["neighbours_after"][:top_n])
        lines.append(
            f"| `{esc(r['token'])}` | {r['l2']:.4f} | {r['relative_l2']:.3f} | {r['cosine']:.4f} "
            f"| {nb} | {na} |"
        )
    return "\n".join(lines)
