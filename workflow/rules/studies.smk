rule sanity:
    """Before fine-tuning, on validation: each row's top- vs bottom-scored filters vs random ones."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "results/sanity/{task}.csv",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        **SANITY_PARAMS,
    log:
        "logs/sanity/{task}.log",
    benchmark:
        "benchmarks/out/sanity/{task}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} sanity --params {params.file} --data {input.data} --model {input.model}"
        " --task {wildcards.task} --out {output} --threads {threads}"


rule sanity_extra_baseline:
    """The sanity check on a further baseline (sanity.extra_baseline_seeds), on that baseline's validation images."""
    input:
        data=DATA,
        model=EXTRA_BASELINE,
    output:
        EXTRA_SANITY,
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        **SANITY_PARAMS,
    log:
        "logs/sanity/seed{train_seed}/{task}.log",
    benchmark:
        "benchmarks/out/sanity/seed{train_seed}/{task}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} sanity --params {params.file} --data {input.data} --model {input.model}"
        " --task {wildcards.task} --out {output} --threads {threads} --train-seed {wildcards.train_seed}"


rule sensitivity:
    """Before fine-tuning, on validation: the accuracy drop when one prunable group loses half its filters."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "results/sensitivity/{task}.csv",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
        criterion_options=config["criterion_options"],
        variants=config["variants"],
        global_pruning=config["prune"]["global"],
        round_to=config["prune"]["round_to"],
        sensitivity=config["sensitivity"],
        seeds=config["seeds"],
    log:
        "logs/sensitivity/{task}.log",
    benchmark:
        "benchmarks/out/sensitivity/{task}.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} sensitivity --params {params.file} --data {input.data} --model {input.model}"
        " --task {wildcards.task} --out {output} --threads {threads}"


rule latency:
    """CPU latency of each distinct pruned architecture, interleaved with the unpruned model."""
    input:
        data=DATA,
        model=BASELINE,
        runs=run_files("results/runs", ".json"),
        models=run_files("work/models", ".pt"),
    output:
        table="results/latency.csv",
        onnx=directory("work/onnx"),
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        evaluate=config["evaluate"],
    log:
        "logs/latency.log",
    threads: workflow.cores
    shell:
        "mapex --log {log} latency --params {params.file} --data {input.data} --model {input.model}"
        " --runs results/runs --models work/models --onnx {output.onnx} --out {output.table} --threads {threads}"


rule samples_study:
    """Pruning in multiple samples: score stability and accuracy against N per class (first task)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "results/samples_study.csv",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
        criterion_options=config["criterion_options"],
        variants=config["variants"],
        global_pruning=config["prune"]["global"],
        round_to=config["prune"]["round_to"],
        finetune=config["finetune"],
        samples_study=config["samples_study"],
    log:
        "logs/samples_study.log",
    benchmark:
        "benchmarks/out/samples_study.tsv"
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} samples --params {params.file} --data {input.data} --model {input.model}"
        " --out {output} --threads {threads}"


rule response_maps:
    """Responses of the best- and worst-scored Map-EX filters on a few task images (first task)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "work/response_maps.npz",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
        criterion_options=config["criterion_options"],
        response_maps=config["response_maps"],
        seeds=config["seeds"],
    log:
        "logs/response_maps.log",
    threads: 1
    shell:
        "mapex --log {log} response-maps --params {params.file} --data {input.data} --model {input.model}"
        " --out {output} --threads {threads}"


rule diagnose:
    """Per conv layer of the first task's model: whole-image receptive fields, constant Map-EX weights,
    and the spread of each variant's scores (why Map-EX may rank filters by noise)."""
    input:
        data=DATA,
        model=BASELINE,
    output:
        "results/diagnosis.csv",
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"],
        statistics=config["statistics"],
        seeds=config["seeds"],
    log:
        "logs/diagnose.log",
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "mapex --log {log} diagnose --params {params.file} --data {input.data} --model {input.model}"
        " --out {output} --threads {threads}"
