"""Run by tests/test_method_distributed.py under `accelerate launch --num_processes 2 --cpu`.

Each rank draws its own local batches (rank-dependent), gathers them with accelerate, feeds the
gathered batch to observe() and writes the sigma used at every step to OUT/rank{r}.json.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, gather

from fairdiffusion.config import section_defaults
from fairdiffusion.method import make_weighting

ATTRIBUTES = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"],
              "ethnicity": ["Non-Hispanic", "Hispanic"]}
STEPS, LOCAL_BATCH = 70, 4


def main(out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    broadcasts = []

    def from_process_0(tensor):
        broadcasts.append(accelerator.step)
        return broadcast(tensor, from_process=0)

    weighting = make_weighting("fairdiffusion", ATTRIBUTES,
                               section_defaults("fair_bayes", {"time_window": 10}), seed=3,
                               rank=rank, broadcast=from_process_0)
    data = torch.Generator().manual_seed(100 + rank)
    probe = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 1]])
    record = {"rank": rank, "world": accelerator.num_processes, "sigma": [], "probe": None}
    for step in range(STEPS):
        groups = torch.stack([torch.randint(0, len(g), (LOCAL_BATCH,), generator=data)
                              for g in ATTRIBUTES.values()], dim=1)
        if step == 0:
            # Same groups on every rank: per-rank z must give different weights.
            record["probe"] = weighting.weights(probe).tolist()
        weights = weighting.weights(groups)
        losses = torch.rand(LOCAL_BATCH, generator=data) * (1 + rank) * weights.abs()
        timesteps = torch.randint(0, 1000, (LOCAL_BATCH,), generator=data)
        record["sigma"].append(weighting.sigma.tolist())
        weighting.observe(gather(losses), gather(groups), gather(timesteps), step)
    record["broadcasts"] = len(broadcasts)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
