#!/usr/bin/env bash
# Trains a SentencePiece tokenizer for test models on public-domain/licence
# text that every Debian system has (package base-files:
# /usr/share/common-licenses, ~260 KB of English prose).
# Usage: tools/train_tokenizer.sh OUT_DIR [VOCAB_SIZE]  -> OUT_DIR/tokenizer.model
set -euo pipefail
out=${1:?usage: train_tokenizer.sh OUT_DIR [VOCAB_SIZE]}
vocab=${2:-512}
mkdir -p "$out"
corpus=$(mktemp)
trap 'rm -f "$corpus"' EXIT
cat /usr/share/common-licenses/{GPL-3,LGPL-3,Apache-2.0,MPL-2.0,GFDL-1.3,Artistic} > "$corpus"
spm_train --input="$corpus" --model_prefix="$out/tokenizer" --vocab_size="$vocab" \
  --model_type=bpe --byte_fallback=true --character_coverage=1.0 \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --num_threads=2 --minloglevel=2 > /dev/null 2>&1 || {
    echo "train_tokenizer: spm_train failed" >&2; exit 1; }
rm -f "$out/tokenizer.vocab"
echo "$out/tokenizer.model"
