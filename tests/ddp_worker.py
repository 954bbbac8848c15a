"""Run under torchrun by test_distributed.py: train, then save this rank's weights for comparison."""

import json
import os
import sys
from pathlib import Path

import torch

from bintally.training import TrainConfig, train

config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
result = train(config)
torch.save(result.model.state_dict(), Path(sys.argv[2]) / f"rank{os.environ['RANK']}.pt")
