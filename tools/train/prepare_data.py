#!/usr/bin/env python3
"""Builds the training corpus of the bundled model from Debian packages, its
held-out split, its SentencePiece tokenizer, and the token ids.

Sources (install with `apt-get install bible-kjv bible-kjv-text fortunes`):
- bible-kjv-text: the King James Version (1611, public domain), read through
  the package's `bible` program (from bible-kjv), one document per chapter:
  "Genesis 1" then one numbered verse per line.
- fortunes: the English fortune-cookie files of BSD fortune
  (/usr/share/games/fortunes), one document per cookie, minus the files in
  FORTUNE_SKIP (ASCII pictures, untranslated text, and the two files of jokes
  about groups of people). Tabs and runs of spaces become one space, lines are
  stripped, overstrike (x BACKSPACE y) is removed.

Documents are shuffled with a fixed seed; HELDOUT_FRACTION of them form the
held-out split. Each split is the documents joined by a blank line.

    prepare_data.py --out build/traindata [--vocab 4096]

writes OUT/train.txt, OUT/heldout.txt, OUT/tokenizer.model (spm_train on
train.txt, BPE, byte fallback, identity normalisation so text round-trips),
OUT/train_ids.npy, OUT/heldout_ids.npy (uint16 ids of the whole split text as
one string, WITHOUT BOS; the engine's --perplexity mode encodes a file the same
way and adds BOS) and OUT/data.json (sizes).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {"art", "ascii-art", "translate-me", "ethnic", "men-women"}
HELDOUT_FRACTION = 0.02
SEED = 20261127


def bible_chapters() -> list[str]:
    """The KJV as a list of chapters, each 'Book N\\n1 verse\\n2 verse...'."""
    out = subprocess.run(["bible", "-l0", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         text=True).stdout
    chapters, cur = [], []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        if re.fullmatch(r"[1-9A-Z][A-Za-z ]* \d+", line):  # chapter heading, e.g. "1 Kings 3"
            if cur:
                chapters.append("\n".join(cur))
            cur = [line]
        else:
            cur.append(" ".join(line.split()))
    chapters.append("\n".join(cur))
    return chapters


def clean_fortune(text: str) -> str:
    text = re.sub(r".\x08", "", text)  # overstrike: drop the struck character and the backspace
    text = re.sub(r"[\x00-\x09\x0b-\x1f\x7f]", " ", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    # Drop leading/trailing blank lines and collapse runs of blank lines into one.
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def fortunes() -> tuple[list[str], list[str]]:
    """(cookies, names of the files read)."""
    docs, files = [], []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or path.name in FORTUNE_SKIP:
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        files.append(path.name)
        for cookie in re.split(r"^%\s*$", text, flags=re.M):
            cookie = clean_fortune(cookie)
            if cookie:
                docs.append(cookie)
    return docs, files


def train_tokenizer(corpus: Path, out_dir: Path, vocab: int) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "tokenizer"
        subprocess.run([
            "spm_train", f"--input={corpus}", f"--model_prefix={prefix}", f"--vocab_size={vocab}",
            "--model_type=bpe", "--byte_fallback=true", "--character_coverage=0.9999",
            "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
            "--split_digits=true", "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
            "--num_threads=2", "--minloglevel=2"], check=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        dst = out_dir / "tokenizer.model"
        dst.write_bytes(prefix.with_suffix(".model").read_bytes())
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bible = bible_chapters()
    assert len(bible) == 1189, len(bible)
    cookies, files = fortunes()
    docs = [("bible", d) for d in bible] + [("fortune", d) for d in cookies]
    rng = random.Random(SEED)
    rng.shuffle(docs)
    n_held = round(len(docs) * HELDOUT_FRACTION)
    held, train = docs[:n_held], docs[n_held:]
    train_text = "\n\n".join(d for _, d in train) + "\n"
    held_text = "\n\n".join(d for _, d in held) + "\n"
    (out / "train.txt").write_text(train_text)
    (out / "heldout.txt").write_text(held_text)

    tok = train_tokenizer(out / "train.txt", out, args.vocab)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    stats = {"vocab_size": sp.get_piece_size(), "fortune_files": files,
             "documents": {"bible_chapters": len(bible), "fortunes": len(cookies)}}
    for name, text in (("train", train_text), ("heldout", held_text)):
        ids = np.asarray(sp.encode(text), dtype=np.uint16)
        assert sp.decode(ids.tolist()) == text, f"{name}: tokenizer does not round-trip"
        np.save(out / f"{name}_ids.npy", ids)
        split = train if name == "train" else held
        stats[name] = {"bytes": len(text.encode()), "tokens": int(ids.size),
                       "documents": len(split),
                       "bible_chapters": sum(k == "bible" for k, _ in split),
                       "fortunes": sum(k == "fortune" for k, _ in split)}
    (out / "data.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "fortune_files"}))


if __name__ == "__main__":
    main()
