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
        data=config["data"],
        model=config["model"],
        train=config["train"],
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
