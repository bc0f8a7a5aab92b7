# Training: fine-tune the UNet on the cached latents, once per dataset, arm (method) and seed.
# Checkpoints live outside the declared outputs (CHECKPOINTS), so a failed or
# retried job resumes from the latest one instead of starting over.


rule train:
    input:
        latents=fill(LATENTS, split="train"),
        base=base_model_input,
    output:
        unet=fill(RUN_FILE, file="unet/config.json"),
        train_log=fill(RUN_FILE, file="train_log.csv"),
        trajectory=fill(RUN_FILE, file="bo_trajectory.csv"),
        run_info=fill(RUN_FILE, file="run_info.json"),
    log:
        "logs/train/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{dataset}/{method}/seed{seed}.tsv"
    # On the critical path (base -> latents -> training): scheduled before jobs that can wait.
    priority: 10
    conda:
        "../../envs/train.yaml"
    # One thread per run: on a small CPU machine the arms then train side by side.
    threads: 1
    resources:
        gpu=1,
        # On a GPU node the step runs on the GPU; the CPUs serve the process, CUDA and I/O.
        cpus_per_gpu=4,
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        base=base_model,
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        train=as_arg(config["train"]),
        fair_bayes=as_arg(config["fair_bayes"]),
        out=lambda wc, output: os.path.dirname(output.run_info),
        checkpoints=CHECKPOINTS,
        # gpu: N (set in the SLURM profile) trains with N processes on one node, one per GPU.
        launch=lambda wc, resources: (
            "accelerate launch --multi_gpu --num_machines 1 --dynamo_backend no "
            f"--num_processes {resources.gpu} -m fairdiffusion.cli"
            if resources.gpu > 1
            else "fairdiff"
        ),
    shell:
        "{params.launch} train --latents {input.latents} --base {params.base} "
        "--dataset {params.dataset} --train {params.train} --method {wildcards.method} "
        "--fair-bayes {params.fair_bayes} --seed {wildcards.seed} --out {params.out} "
        "--checkpoints {params.checkpoints} --threads {threads} > {log} 2>&1"
