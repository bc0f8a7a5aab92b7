"""DAG bench: time of `snakemake -n` on the paper config (3 datasets x 3 arms x 3 seeds).

Target: under 5 s. Prints the number of jobs, the median of 3 runs, and the ratio to the target
last; writes results/bench/dag.csv.
"""

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def dry_run(configfile: str, workdir: str) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(ROOT / "Snakefile"),
         "-d", workdir, "--configfile", str(ROOT / configfile), "--replace-workflow-config"],
        capture_output=True, text=True, check=True,
    )
    elapsed = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M)
    return elapsed, int(total.group(1)) if total else 0


def main():
    from fairdiffusion import io

    rows = []
    for configfile in ["config.yaml", "configs/paper.yaml"]:
        times, jobs = [], 0
        for _ in range(3):
            # An empty working directory: the whole DAG, whatever ./results already holds.
            with tempfile.TemporaryDirectory(prefix="fairdiff-dag-") as workdir:
                seconds, jobs = dry_run(configfile, workdir)
            times.append(seconds)
        rows.append({"config": configfile, "jobs": jobs, "median_s": statistics.median(times)})
        print(f"{configfile}: {jobs} jobs, snakemake -n median {rows[-1]['median_s']:.2f} s")
    io.write_csv(ROOT / "results" / "bench" / "dag.csv", pd.DataFrame(rows))
    paper = rows[-1]["median_s"]
    print(f"paper DAG dry-run: {paper:.2f} s = {paper / TARGET_S:.2f} x the 5 s target")


if __name__ == "__main__":
    main()
