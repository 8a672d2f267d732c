rule train_baseline:
    """Train the network on every source class; the task models are cut from it."""
    input:
        DATA,
    output:
        model=BASELINE,
        history="results/baseline/history.csv",
        metrics="results/baseline/metrics.json",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        **TRAINING_PARAMS,
    log:
        "logs/train_baseline.log",
    benchmark:
        "benchmarks/out/train_baseline.tsv"
    threads: workflow.cores
    resources:
        gpu=GPU * config["train"]["nproc"],
    shell:
        "mapex --log {log} train --params {params.file} --data {input} --out {output.model}"
        " --metrics {output.metrics} --history {output.history} --threads {threads}"


rule train_extra_baseline:
    """One more baseline, trained like the first with another train.seed, for the sanity check."""
    input:
        DATA,
    output:
        model=EXTRA_BASELINE,
        history=f"{EXTRA_BASELINE_RESULTS}/history.csv",
        metrics=f"{EXTRA_BASELINE_RESULTS}/metrics.json",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        **TRAINING_PARAMS,
    log:
        "logs/train_baseline/seed{train_seed}.log",
    benchmark:
        "benchmarks/out/train_baseline/seed{train_seed}.tsv"
    threads: workflow.cores
    resources:
        gpu=GPU * config["train"]["nproc"],
    shell:
        "mapex --log {log} train --params {params.file} --data {input} --out {output.model}"
        " --metrics {output.metrics} --history {output.history} --threads {threads} --train-seed {wildcards.train_seed}"
