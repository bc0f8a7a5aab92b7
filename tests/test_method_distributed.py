"""Two CPU processes (gloo) share one sigma: the method run under `accelerate launch`."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("method_distributed_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_method_state_identical_across_ranks(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    # accelerate 1.15: `--cpu` alone runs one process (its simple launcher); `--multi_gpu` starts
    # the torchrun launcher, and the script's Accelerator(cpu=True) then uses gloo on CPU.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(SCRIPT), str(tmp_path)]
    # A private HF_HOME: no user accelerate config file is picked up.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert len(ranks[0]["sigma"]) == 70
    assert ranks[0]["sigma"] == ranks[1]["sigma"]
    # sigma moved (refresh + 7 BO updates, each passed through broadcast on both ranks)
    assert ranks[0]["sigma"][0] != ranks[0]["sigma"][-1]
    assert [r["broadcasts"] for r in ranks] == [7, 7]
    # z is drawn per rank: the same groups get different weights on the two ranks
    assert ranks[0]["probe"] != ranks[1]["probe"]

    # balanced, reweighted, groupdro: the same state on both ranks at every step
    for name in ("balanced", "reweighted", "groupdro"):
        a, b = ranks[0][name], ranks[1][name]
        assert a["state"] == b["state"] and a["q"] == b["q"]
        assert a["cell_weights"] == b["cell_weights"]
        assert a["probabilities"] == b["probabilities"]
        assert a["rows"] != b["rows"]   # each rank draws its own local batches
    q = ranks[0]["groupdro"]["q"]
    assert q[0] != q[-1]                      # q moved, from the gathered losses
    assert ranks[0]["reweighted"]["cell_weights"] is not None
    assert ranks[0]["balanced"]["probabilities"] is not None
