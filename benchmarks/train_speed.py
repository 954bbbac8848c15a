"""Images per second for frozen-feature extraction and for full fine-tuning steps, on this machine.

Each measurement runs in a fresh process, once with glibc's default allocator settings and once
with the settings bintally recommends (docs/benchmarks.md), so the ratio is measured in one run.

    .venv/bin/python benchmarks/train_speed.py [--backbone efficientnet_lite0] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000"}


def measure(kind: str, backbone: str, batch: int, steps: int, size: int) -> dict:
    import torch

    from bintally.data.images import decode_image
    from bintally.data.transforms import TransformConfig, build_transform
    from bintally.models import CountingModel, ModelConfig
    from bintally.paths import SAMPLE_DIR

    torch.manual_seed(0)
    model = CountingModel(ModelConfig(backbone=backbone)).to(memory_format=torch.channels_last)
    transform = build_transform(TransformConfig(size, *[model.normalization.mean, model.normalization.std]), train=kind == "finetune")
    photos = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:batch]
    x = torch.stack([transform(decode_image(p)) for p in photos]).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)

    def step():
        if kind == "features":
            with torch.inference_mode():
                model.backbone.eval()(x)
        else:
            model.train()
            loss = model.loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    return {"kind": kind, "images_per_s": batch / median, "median_step_s": median, "threads": torch.get_num_threads()}


def run_child(kind: str, args, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC} | (TUNED_MALLOC if tuned else {})
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--backbone", args.backbone, "--batch", str(args.batch),
                          "--steps", str(args.steps), "--size", str(args.size)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.backbone, args.batch, args.steps, args.size)))
        return
    print("| what | allocator | images/s | median step (s) |\n|---|---|---|---|")
    for kind in ("features", "finetune"):
        for tuned in (False, True):
            r = run_child(kind, args, tuned)
            label = "tuned glibc malloc" if tuned else "default"
            print(f"| {kind} ({args.backbone}, {args.size}px, batch {args.batch}) | {label} | {r['images_per_s']:.1f} | {r['median_step_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
