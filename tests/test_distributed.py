"""DistributedDataParallel on CPU: two Gloo processes under torchrun, checked against one process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bintally.training import train
from tests.training_helpers import tiny_config

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_gloo_ranks_match_each_other_and_one_process(tiny_manifest, tmp_path):
    # dropout off: each process draws its own masks, which one process cannot reproduce
    per_rank = tiny_config(tiny_manifest, tmp_path / "ddp", batch_size=8, epochs=1, max_steps=6, dropout=0.0)
    (tmp_path / "config.json").write_text(json.dumps(per_rank.to_dict()))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", WORKER,
         tmp_path / "config.json", tmp_path],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    assert not (tmp_path / "ddp" / "rank1").exists()
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["world_size"] == 2

    single = train(replace(per_rank, out=str(tmp_path / "single"), batch_size=16)).model.state_dict()
    worst = {k: float((rank0[k].float() - single[k].float()).abs().max()) for k in rank0}
    assert max(worst.values()) < 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    initial = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=False)["global_step"]
    assert initial == 6
