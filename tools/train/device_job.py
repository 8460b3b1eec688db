#!/usr/bin/env python3
"""The bundled model's whole training job, as one process on the GPU machine.

    OUT=dir python3 tools/train/device_job.py --data build/traindata [--deadline 550]

1. check_model.run_checks(): chunkwise == recurrent (scan and loop forms), PyTorch ==
   tools/reference; stops on failure. Trains with the scan form if it passed.
2. Run A: train.train() for 1500 steps, dropout 0.1, checkpoint into OUT/ckpt.
3. Run B with the time left: twice as long if A's held-out loss was still falling at its
   end, else as long with dropout 0.2; its checkpoint replaces OUT/ckpt if better.
4. finalize.finalize() on OUT/ckpt: OUT/metrics.json, OUT/agreement.npz.
Everything is written to OUT as soon as it exists (OUT/device.log mirrors stdout,
OUT/train_log.jsonl holds both runs' logs), and a run stops by itself before the
deadline (seconds after start) leaves finalize less than `reserve` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

T0 = time.time()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
            st.flush()

    def flush(self):
        for st in self.streams:
            st.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding...: the terminal's
        return getattr(self.streams[0], name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="build/traindata")
    ap.add_argument("--deadline", type=float, default=550.0)
    ap.add_argument("--reserve", type=float, default=70.0, help="seconds kept for finalize")
    ap.add_argument("--a_steps", type=int, default=1500)
    args = ap.parse_args()
    out = Path(os.environ["OUT"])
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = sys.stderr = Tee(sys.__stdout__, open(out / "device.log", "a"))

    def left() -> float:
        return args.deadline - args.reserve - (time.time() - T0)

    import torch
    import check_model
    import finalize
    import model as model_module
    import train
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {time.time() - T0:.0f} s", flush=True)
    impl = check_model.run_checks()
    print(f"checks done in {time.time() - T0:.0f} s: impl={impl}, failed={check_model.FAILED}", flush=True)
    if impl is None:
        return 1
    model_module.CHUNK_IMPL = impl

    log = out / "train_log.jsonl"
    parser = train.build_parser()
    a = parser.parse_args(["--data", args.data, "--out", str(out), "--name", "A", "--steps", str(args.a_steps),
                           "--dropout", "0.1", "--seed", "1", "--time_budget", f"{min(240.0, left() - 120):.0f}"])
    sa = train.train(a, log, out / "ckpt")
    summaries = [sa]
    best_ckpt_eval = sa["best"]["eval_loss"]
    budget_b = left()
    if budget_b > 90:
        still_falling = sa["best"]["step"] >= 0.9 * sa["steps"]
        steps_b = 2 * sa["steps"] if still_falling else sa["steps"]
        drop_b = 0.1 if still_falling else 0.2
        print(f"run B: A's best at step {sa['best']['step']} of {sa['steps']} -> {steps_b} steps, "
              f"dropout {drop_b}, budget {budget_b:.0f} s", flush=True)
        b = parser.parse_args(["--data", args.data, "--out", "/tmp/runB", "--name", "B", "--steps", str(steps_b),
                               "--dropout", str(drop_b), "--seed", "2", "--time_budget", f"{budget_b:.0f}"])
        try:
            sb = train.train(b, log, Path("/tmp/runB/ckpt"))
        except Exception:  # keep run A
            import traceback
            traceback.print_exc()
            sb = None
        if sb is not None:
            summaries.append(sb)
        if sb is not None and sb["best"]["eval_loss"] < best_ckpt_eval:
            for f in Path("/tmp/runB/ckpt").iterdir():
                shutil.copyfile(f, out / "ckpt" / f.name)
            best_ckpt_eval = sb["best"]["eval_loss"]
    chosen = min(summaries, key=lambda s: s["best"]["eval_loss"])["run"]
    print(f"chosen run {chosen} (held-out loss {best_ckpt_eval:.4f}); finalize at {time.time() - T0:.0f} s", flush=True)
    metrics = finalize.finalize(out / "ckpt", Path(args.data), out, summaries)
    metrics["chosen_run"] = chosen
    metrics["job_seconds"] = time.time() - T0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"device_job: done in {time.time() - T0:.0f} s", flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
