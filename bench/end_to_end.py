"""End-to-end bench: the default `snakemake` run from an empty results folder.

Runs the default config in a fresh working directory (so it never touches ./results), then reads
Snakemake's `benchmark:` files for wall time and peak RSS per rule. Targets: the whole default in
at most 10 minutes on 2 cores, peak RSS under 4 GiB. Writes results/bench/end_to_end.csv and
prints the ratio to the time target last.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0
TARGET_RSS_MB = 4096.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fairdiff-e2e-"))
    try:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
             "--configfile", str(ROOT / "config.yaml"), "--cores", str(args.cores)],
            check=True,
        )
        wall = time.perf_counter() - start
        summarise(workdir, wall, args.cores)
    finally:
        if args.keep:
            print(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir)


def summarise(workdir: Path, wall: float, cores: int):
    from fairdiffusion import io

    rows = []
    for tsv in sorted((workdir / "benchmarks").rglob("*.tsv")):
        bench = pd.read_csv(tsv, sep="\t")
        rows.append({
            "rule": tsv.relative_to(workdir / "benchmarks").parts[0],
            "job": str(tsv.relative_to(workdir / "benchmarks").with_suffix("")),
            "seconds": float(bench["s"].iloc[0]),
            "cpu_seconds": float(bench["cpu_time"].iloc[0]),
            "max_rss_mb": float(pd.to_numeric(bench["max_rss"], errors="coerce").iloc[0]),
        })
    table = pd.DataFrame(rows)
    io.write_csv(ROOT / "results" / "bench" / "end_to_end.csv", table)
    by_rule = table.groupby("rule").agg(jobs=("job", "size"), seconds=("seconds", "sum"),
                                        cpu_seconds=("cpu_seconds", "sum"),
                                        max_rss_mb=("max_rss_mb", "max"))
    print(by_rule.sort_values("seconds", ascending=False).to_string())
    peak = table["max_rss_mb"].max()
    print(f"peak RSS {peak:.0f} MB = {peak / TARGET_RSS_MB:.2f} x the 4 GiB target")
    # The same work on N cores takes at least (CPU-seconds / N) whatever the schedule: the bound
    # says whether a target is reachable by scheduling or needs less work. Jobs without a
    # benchmark file (tables, figures, report: seconds each) are left out.
    cpu = table["cpu_seconds"].sum()
    train = table.loc[table["rule"] == "train", "cpu_seconds"].sum()
    print(f"CPU-seconds of jobs {cpu:.0f} (training {train:.0f}, {train / cpu:.0%}); on {cores} "
          f"cores no schedule beats {cpu / cores:.0f} s, training alone {train / cores:.0f} s; "
          f"this run kept {cpu / (cores * wall):.0%} of its cores busy")
    print(f"default run wall time {wall:.0f} s = {wall / TARGET_S:.2f} x the 10 min target")


if __name__ == "__main__":
    main()
