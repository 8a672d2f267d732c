rule scores:
    """Per-filter scores of one criterion over N task samples per class (seeded)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "work/scores/{criterion}/s{seed}.pt",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
    log:
        "logs/scores/{criterion}/s{seed}.log",
    benchmark:
        "benchmarks/out/scores/{criterion}/s{seed}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "mapex --log {log} scores --params {params.file} --data {input.data} --model {input.model}"
        " --criterion {wildcards.criterion} --seed {wildcards.seed} --out {output} --threads {threads}"


rule prune:
    """Physically remove the lowest-scored filters of the task model."""
    input:
        data=DATA,
        model=BASELINE,
        scores="work/scores/{criterion}/s{seed}.pt",
    output:
        "work/pruned/{criterion}/r{ratio}/s{seed}.pt",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        global_pruning=config["prune"]["global"],
    log:
        "logs/prune/{criterion}/r{ratio}/s{seed}.log",
    threads: 1
    shell:
        "mapex --log {log} prune --params {params.file} --data {input.data} --model {input.model}"
        " --scores {input.scores} --criterion {wildcards.criterion} --ratio {wildcards.ratio}"
        " --seed {wildcards.seed} --out {output} --threads {threads}"


rule unpruned:
    """The reference: the task model with nothing removed (fine-tuned like the others)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        f"work/pruned/{UNPRUNED}/r0/s{{seed}}.pt",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
    log:
        f"logs/prune/{UNPRUNED}/r0/s{{seed}}.log",
    threads: 1
    shell:
        "mapex --log {log} prune --params {params.file} --data {input.data} --model {input.model}"
        f" --criterion {UNPRUNED} --ratio 0 --seed {{wildcards.seed}} --out {{output}} --threads {{threads}}"


rule finetune:
    """Same budget, schedule and seed for every criterion; best epoch chosen on validation."""
    input:
        data=DATA,
        model="work/pruned/{criterion}/r{ratio}/s{seed}.pt",
    output:
        model="work/finetuned/{criterion}/r{ratio}/s{seed}.pt",
        history="results/history/{criterion}/r{ratio}/s{seed}.csv",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        finetune=config["finetune"],
    log:
        "logs/finetune/{criterion}/r{ratio}/s{seed}.log",
    benchmark:
        "benchmarks/out/finetune/{criterion}/r{ratio}/s{seed}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "mapex --log {log} finetune --params {params.file} --data {input.data} --model {input.model}"
        " --seed {wildcards.seed} --out {output.model} --history {output.history} --threads {threads}"


rule evaluate:
    """Test top-1, params, MACs, file size and latency of one fine-tuned model."""
    input:
        data=DATA,
        pruned="work/pruned/{criterion}/r{ratio}/s{seed}.pt",
        model="work/finetuned/{criterion}/r{ratio}/s{seed}.pt",
    output:
        "results/runs/{criterion}/r{ratio}/s{seed}.json",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        evaluate=config["evaluate"],
    log:
        "logs/evaluate/{criterion}/r{ratio}/s{seed}.log",
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "mapex --log {log} evaluate --params {params.file} --data {input.data} --model {input.model}"
        " --pruned {input.pruned} --out {output} --threads {threads}"
