rule scores:
    """Per-filter scores of one row's criterion over N task samples per class (seeded)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        SCORES,
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
        row=scoring_params,
    log:
        "logs/scores/{task}/{criterion}/s{seed}.log",
    benchmark:
        "benchmarks/out/scores/{task}/{criterion}/s{seed}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} scores --params {params.file} --data {input.data} --model {input.model}"
        " --task {wildcards.task} --criterion {wildcards.criterion} --seed {wildcards.seed} --out {output}"
        " --threads {threads}"


rule run:
    """Prune the task model by one row's scores (none: keep it whole), fine-tune it with the budget
    every row gets, and evaluate it on the task's test split: one process per run."""
    input:
        data=DATA,
        model=BASELINE,
        scores=scores_of,
    output:
        model="work/models/{task}/{criterion}/r{ratio}/s{seed}.pt",
        history="results/history/{task}/{criterion}/r{ratio}/s{seed}.csv",
        metrics="results/runs/{task}/{criterion}/r{ratio}/s{seed}.json",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        pruning=pruning_params,
        finetune=config["finetune"],
        scores=scores_option,
    log:
        "logs/run/{task}/{criterion}/r{ratio}/s{seed}.log",
    benchmark:
        "benchmarks/out/run/{task}/{criterion}/r{ratio}/s{seed}.tsv"
    threads: config["finetune"]["nproc"]
    resources:
        gpu=GPU * config["finetune"]["nproc"],
    shell:
        "mapex --log {log} run --params {params.file} --data {input.data} --model {input.model}"
        " --task {wildcards.task} --criterion {wildcards.criterion} --ratio {wildcards.ratio}"
        " --seed {wildcards.seed} {params.scores} --out {output.model} --history {output.history}"
        " --metrics {output.metrics} --threads {threads}"
