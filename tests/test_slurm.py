"""SLURM integration: the embedded pipeline, tiny and up to sampling, through snakemake-executor-plugin-slurm and
real sbatch on a one-node cluster (tests/slurm/cluster.sh) with slurmdbd accounting and one
fake GPU. Checks what reaches SLURM (GPU rules get the GPU, the profile's retries resubmit a
failed job with more memory), that every output exists and that every job's SLURM log is kept.

Runs only where SLURM can be installed and started (root on Debian/Ubuntu); skips elsewhere.
"""

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# The test cluster (tests/slurm/slurm.conf.in): account, partitions and GPU type.
ACCOUNT, CPU_PARTITION, GPU_PARTITION, GPU_MODEL = "fairdiff", "cpu", "gpu", "fake"
# A hung run is stopped after this long (with SIGINT, so that Snakemake cancels its jobs).
RUN_LIMIT_S = 900

# The embedded default made tiny: few images, few steps, one seed (all three arms).
TINY = {
    "datasets": {
        "synthfundus": {"synthetic": {"n_train": 48, "n_val": 12, "n_test": 24}},
    },
    "model": {"vae": {"steps": 4, "batch_size": 8}, "text_encoder": {"steps": 2, "batch_size": 8}},
    "train": {"max_steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1},
    "fair_bayes": {"time_window": 2},
    "sample": {"num_inference_steps": 2, "train_prompts": 24, "batch_size": 24},
    "evaluate": {"classifier": {"epochs": 1}, "bootstrap": 10, "kid_subset_size": 8},
    "report": {"grid_prompts": 1},
}

# Appended to the pipeline in the test's working directory: a job that fails on its first
# attempt only, with a memory request that grows with the attempt, like the GPU rules'.
FLAKY_RULE = """
include: "{snakefile}"


rule flaky:
    output:
        "flaky.txt",
    resources:
        mem_mb=lambda wildcards, attempt: 100 * attempt,
        attempt=lambda wildcards, attempt: attempt,
    shell:
        "test {{resources.attempt}} -gt 1 && echo {{resources.attempt}} > {{output}}"
"""


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node cluster; the environment that reaches it."""
    state = tmp_path_factory.mktemp("slurm-cluster")
    env = {**os.environ, "FAIRDIFF_SLURM_DIR": str(state)}
    try:
        up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True)
        if up.returncode == 3:
            pytest.skip(f"SLURM cannot be installed or started here: {up.stderr.strip()}")
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stderr}"
        yield {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
    finally:
        subprocess.run([str(CLUSTER), "down"], env=env, check=False)


def make_profile(path: Path) -> dict:
    """profiles/slurm with its placeholders set for the test cluster, and quick status checks."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(slurm_partition=CPU_PARTITION, slurm_account=ACCOUNT)
    for resources in profile["set-resources"].values():
        resources.update(slurm_partition=GPU_PARTITION, gpu_model=GPU_MODEL)
        # Fit the GPU jobs (4 CPUs, 16 GB on a real GPU node) onto the 2-CPU test node.
        resources.update(cpus_per_gpu=1, mem_mb=2000)
    profile["slurm-init-seconds-before-status-checks"] = 2
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump(profile))
    return profile


def snakemake(args: list[str], cwd: Path, env: dict, log: Path) -> int:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            return proc.wait(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            # SIGINT makes Snakemake scancel its jobs; SIGTERM would leave them queued.
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            pytest.fail(f"snakemake still running after {RUN_LIMIT_S} s; see {log}")


def sacct_jobs(workdir: Path, env: dict) -> list[dict]:
    """Accounting records of the jobs submitted from workdir, oldest first."""
    fields = ["JobID", "State", "Comment", "AllocTRES", "WorkDir", "SubmitLine"]
    columns = ",".join(f"{field}%10000" for field in fields)  # %N: no truncation
    sacct = ["sacct", "-X", "-n", "-P", "--delimiter=\t", "-S", "2000-01-01", "-o", columns]
    out = subprocess.run(sacct, env=env, capture_output=True, text=True, check=True).stdout
    jobs = [dict(zip(fields, line.split("\t", len(fields) - 1))) for line in out.splitlines()]
    jobs = [job for job in jobs if Path(job["WorkDir"]) == workdir]
    for job in jobs:
        # The executor puts the rule (and wildcards) into the job's comment.
        job["rule"] = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)
    return sorted(jobs, key=lambda job: int(job["JobID"]))


def test_pipeline_on_slurm(cluster, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = merge(yaml.safe_load((ROOT / "config.yaml").read_text()), TINY)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    (workdir / "Snakefile").write_text(FLAKY_RULE.format(snakefile=ROOT / "Snakefile"))
    profile = make_profile(workdir / "profile")
    # the classifiers (semantic*) are metrics, not run here
    gpu_rules = set(profile["set-resources"]) - {"semantic", "semantic_reference"}
    # Everything up to sampling, every arm: all the GPU rules. (The CPU-only metrics and
    # tables add ~25 short jobs, minutes on a 2-CPU node, and nothing SLURM-specific.)
    samples = [
        f"results/samples/{dataset}/{method}/seed{seed}/{split}"
        for dataset in config["datasets"]
        for method in config["methods"]
        for seed in config["seeds"]
        for split in ("train", "test")
    ]
    args = ["--profile", "profile", *samples, "flaky.txt"]

    rc = snakemake(args, workdir, cluster, tmp_path / "snakemake.log")
    log = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, log[-6000:]

    # Every output of the pipeline exists: nothing is left to run.
    snakemake([*args, "--dry-run"], workdir, cluster, tmp_path / "dry-run.log")
    assert "Nothing to be done" in (tmp_path / "dry-run.log").read_text()

    for folder in samples:
        assert (workdir / folder / "prompts.csv").exists(), folder
        assert list((workdir / folder).glob("*.png")), f"no images in {folder}"

    jobs = sacct_jobs(workdir, cluster)
    ran = {job["rule"] for job in jobs}
    assert gpu_rules <= ran, ran
    for job in jobs:
        gpu = job["rule"] in gpu_rules
        assert (f"--gpus={GPU_MODEL}:1" in job["SubmitLine"]) == gpu, job
        assert ("gres/gpu=1" in job["AllocTRES"]) == gpu, job
        assert f"-p {GPU_PARTITION if gpu else CPU_PARTITION} " in job["SubmitLine"], job
        assert f"-A {ACCOUNT} " in job["SubmitLine"], job
        # Every job's SLURM log is kept, successful ones included.
        kept = list(
            (workdir / "logs" / "slurm" / f"rule_{job['rule']}").rglob(f"{job['JobID']}.log")
        )
        assert kept, f"no SLURM log kept for job {job['JobID']} ({job['rule']})"

    # The flaky job failed once, was resubmitted with twice the memory, and then succeeded.
    flaky = [job for job in jobs if job["rule"] == "flaky"]
    assert [job["State"] for job in flaky] == ["FAILED", "COMPLETED"]
    assert [re.search(r"--mem (\d+)", job["SubmitLine"]).group(1) for job in flaky] == [
        "100",
        "200",
    ]
    assert (workdir / "flaky.txt").read_text().strip() == "2"


# A training long enough to requeue after its first checkpoint: FairDiffusion, so that the BO
# state (history, sigma, RNG) has to survive the requeue too.
REQUEUE = {
    "methods": ["fairdiffusion"],
    "train": {"max_steps": 120, "checkpoint_every": 20, "log_every": 5},
}
RUN = "results/models/synthfundus/fairdiffusion/seed0"
CHECKPOINTS = "results/checkpoints/synthfundus/fairdiffusion/seed0"


def sbatch_training(workdir: Path, env: dict) -> str:
    """Submit the training (and what it needs) as one requeueable batch job; its id."""
    command = (f"{sys.executable} -m snakemake --cores 1 --rerun-incomplete "
               f"{RUN}/run_info.json")
    out = subprocess.run(
        ["sbatch", "--parsable", "--requeue", "--open-mode=append", "-A", ACCOUNT,
         "-p", CPU_PARTITION, "-c", "1", "--mem", "1500", "-D", str(workdir),
         "-o", str(workdir / "slurm-%j.log"), "--wrap", command],
        env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_fields(job: str, env: dict) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                         capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def wait_until(condition, limit_s: float, what: str):
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(0.5)


def test_requeued_training_resumes_to_the_same_weights(cluster, tmp_path):
    """`scontrol requeue` after the first checkpoint: the job restarts under the same id, the
    training resumes from its checkpoint, and the final weights equal an uninterrupted run's."""
    from safetensors.torch import load_file

    config = merge(merge(yaml.safe_load((ROOT / "config.yaml").read_text()), TINY), REQUEUE)
    dirs = {}
    for name in ("requeued", "uninterrupted"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        (dirs[name] / "config.yaml").write_text(yaml.safe_dump(config))
        (dirs[name] / "Snakefile").write_text(f'include: "{ROOT / "Snakefile"}"\n')
    jobs = {name: sbatch_training(folder, cluster) for name, folder in dirs.items()}

    first = dirs["requeued"] / CHECKPOINTS
    wait_until(lambda: any(first.glob("checkpoint-*/state.json")), 600, "the first checkpoint")
    subprocess.run(["scontrol", "requeue", jobs["requeued"]], env=cluster, check=True)
    # A requeued job may start again once its old credential has expired: cred_expire, 10 s in
    # the test cluster (tests/slurm/slurm.conf.in).
    wait_until(lambda: job_fields(jobs["requeued"], cluster)["Restarts"] == "1", 60,
               "the job to be requeued")
    for name, job in jobs.items():
        wait_until(lambda: job_fields(job, cluster)["JobState"] in ("COMPLETED", "FAILED"),
                   RUN_LIMIT_S, f"the {name} job to end")
        assert job_fields(job, cluster)["JobState"] == "COMPLETED", (
            dirs[name] / f"slurm-{job}.log").read_text()[-4000:]

    assert job_fields(jobs["requeued"], cluster)["Restarts"] == "1"
    assert job_fields(jobs["uninterrupted"], cluster)["Restarts"] == "0"
    train_log = (dirs["requeued"] / "logs" / "train" / "synthfundus" / "fairdiffusion" /
                 "seed0.log")
    resumed = re.findall(r"resuming from .*checkpoint-(\d+) \(step (\d+)\)", train_log.read_text())
    assert resumed and 0 < int(resumed[-1][1]) < config["train"]["max_steps"], resumed

    weights = {name: sorted((folder / RUN).rglob("*.safetensors")) for name, folder in dirs.items()}
    assert weights["requeued"], "no weights written"
    assert [p.relative_to(dirs["requeued"]) for p in weights["requeued"]] == [
        p.relative_to(dirs["uninterrupted"]) for p in weights["uninterrupted"]]
    for a, b in zip(weights["requeued"], weights["uninterrupted"]):
        ta, tb = load_file(str(a)), load_file(str(b))
        assert ta.keys() == tb.keys()
        assert all(ta[k].equal(tb[k]) for k in ta), f"{a.name} differs after the requeue"
    for name in ("train_log.csv", "bo_trajectory.csv"):
        # everything but the wall-clock column
        logs = [pd.read_csv(folder / RUN / name).drop(columns="time", errors="ignore")
                for folder in dirs.values()]
        pd.testing.assert_frame_equal(*logs, check_exact=True, obj=name)


def test_preflight_checks_the_profile_account_and_partitions(cluster, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = merge(yaml.safe_load((ROOT / "config.yaml").read_text()), TINY)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    (workdir / "Snakefile").write_text(f'include: "{ROOT / "Snakefile"}"\n')
    make_profile(workdir / "profile")
    assert snakemake(["--profile", "profile", "preflight"], workdir, cluster,
                     tmp_path / "ok.log") == 0, (tmp_path / "ok.log").read_text()[-4000:]
    table = (workdir / "logs" / "preflight.log").read_text()
    for what in (f"slurm account {ACCOUNT}", f"slurm partition {CPU_PARTITION}",
                 f"slurm partition {GPU_PARTITION}"):
        assert re.search(rf"^{what}\s+OK", table, re.M), table

    profile = yaml.safe_load((workdir / "profile" / "config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = "no_such_account"
    profile["set-resources"]["train"]["slurm_partition"] = "no_such_partition"
    (workdir / "bad").mkdir()
    (workdir / "bad" / "config.yaml").write_text(yaml.safe_dump(profile))
    assert snakemake(["--profile", "bad", "preflight"], workdir, cluster,
                     tmp_path / "bad.log") != 0
    table = (workdir / "logs" / "preflight.log").read_text()
    assert re.search(r"^slurm account no_such_account\s+PROBLEM", table, re.M), table
    assert re.search(r"^slurm partition no_such_partition\s+PROBLEM", table, re.M), table
