"""Logits of the PyTorch implementation (tools/train/model.py) in float32 for
a gdnserve model directory, for the agreement check with the C++ engine.

usage: torch_logits.py --model DIR --ids IDS.npy --out PREFIX
  IDS.npy: int32 [S, T] token ids (S sequences of T tokens, each starting with BOS)
  writes PREFIX_<s>.npy: float32 [T, vocab] per sequence
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import safetensors_np  # noqa: E402
from model import GDN2Config, GDN2LM  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    # Exact float32 matmuls: no TF32 on Ampere/Hopper.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = Path(args.model)
    cfg = GDN2Config.from_json(json.loads((model_dir / "config.json").read_text()))
    weights = safetensors_np.load_model(model_dir)
    model = GDN2LM(cfg).to(dev).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float32)))
        ids = torch.from_numpy(np.load(args.ids).astype(np.int64)).to(dev)
        logits, _ = model(ids)
    for i, row in enumerate(logits.float().cpu().numpy()):
        np.save(f"{args.out}_{i}.npy", row)
    print(f"torch_logits: {tuple(logits.shape)} on {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
