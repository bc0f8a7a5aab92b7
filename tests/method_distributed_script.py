"""Run by tests/test_method_distributed.py under `accelerate launch --num_processes 2 --cpu`.

Each rank draws its own local batches (rank-dependent), gathers them with accelerate, feeds the
gathered batch to observe() and writes the sigma used at every step to OUT/rank{r}.json; then the
same for the arms balanced, reweighted and groupdro (their state: q, weights, probabilities).
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
                               section_defaults({"time_window": 10}, "fair_bayes"), seed=3,
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
    record.update(new_arms(rank, accelerator.num_processes))
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()


def new_arms(rank: int, world: int) -> dict:
    """balanced, reweighted, groupdro driven like the training loop: each rank weights its own
    local batch (balanced: drawn by the arm) and observes the gathered batch."""
    # the training data's groups: the same on every rank (the latent cache)
    data_groups = torch.stack([torch.randint(0, len(g), (60,), generator=torch.Generator()
                                             .manual_seed(7 + a))
                               for a, g in enumerate(ATTRIBUTES.values())], dim=1)
    settings = section_defaults({"group_attribute": "race", "intersect": True,
                                 "groupdro_eta": 1.0}, "fair_bayes")
    out = {}
    for name in ("balanced", "reweighted", "groupdro"):
        weighting = make_weighting(name, ATTRIBUTES, settings, seed=3, rank=rank,
                                   data_groups=data_groups)
        order = weighting.batch_order(LOCAL_BATCH)
        data = torch.Generator().manual_seed(200 + rank)
        rows, q, weights = [], [], []
        for step in range(20):
            if order is not None:
                idx = order(step * world + rank)   # the loop's global micro-batch index
            else:
                idx = torch.randint(0, len(data_groups), (LOCAL_BATCH,), generator=data)
            groups = data_groups[idx]
            w = weighting.weights(groups)
            losses = torch.rand(LOCAL_BATCH, generator=data) * (1 + rank)
            rows.append(idx.tolist())
            weights.append(w.tolist())
            q.append(weighting.q.tolist() if weighting.q is not None else None)
            weighting.observe(gather(losses), gather(groups),
                              gather(torch.zeros(LOCAL_BATCH, dtype=torch.long)), step)
        state = weighting.state_dict()
        out[name] = {"rows": rows, "q": q, "weights": weights,
                     "state": {k: v.tolist() if isinstance(v, torch.Tensor) else v
                               for k, v in state.items()},
                     "cell_weights": (weighting.cell_weights.tolist()
                                      if weighting.cell_weights is not None else None),
                     "probabilities": (weighting.probabilities.tolist()
                                       if weighting.probabilities is not None else None)}
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]))
