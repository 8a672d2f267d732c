rule samples_study:
    """Pruning in multiple samples: score stability and accuracy against N per class."""
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
        samples_study=config["samples_study"],
    log:
        "logs/samples_study.log",
    benchmark:
        "benchmarks/out/samples_study.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "mapex --log {log} samples --params {params.file} --data {input.data} --model {input.model}"
        " --out {output} --threads {threads}"


rule response_maps:
    """Foreground/background responses of the best- and worst-scored filters on a few task images."""
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
        response_maps=config["response_maps"],
    log:
        "logs/response_maps.log",
    threads: workflow.cores
    shell:
        "mapex --log {log} response-maps --params {params.file} --data {input.data} --model {input.model}"
        " --out {output} --threads {threads}"


rule report:
    """Tables and figures from the evaluated runs alone: rerunning it retrains nothing."""
    input:
        runs=expand("results/runs/{run}.json", run=run_ids(config)),
        samples="results/samples_study.csv",
        response_maps="work/response_maps.npz",
        history="results/baseline/history.csv",
    output:
        "results/tables/summary.csv",
        "results/tables/summary.md",
        "results/tables/summary.json",
        report(
            multiext("results/figures/accuracy_vs_ratio", ".png", ".pdf"),
            caption="../report/accuracy_vs_ratio.rst",
            category="Accuracy",
        ),
        report(
            multiext("results/figures/accuracy_vs_macs", ".png", ".pdf"),
            caption="../report/accuracy_vs_macs.rst",
            category="Accuracy",
        ),
        report(
            multiext("results/figures/filters_per_layer", ".png", ".pdf"),
            caption="../report/filters_per_layer.rst",
            category="Pruned architectures",
        ),
        report(
            multiext("results/figures/response_maps", ".png", ".pdf"),
            caption="../report/response_maps.rst",
            category="Feature representation",
        ),
        report(
            multiext("results/figures/samples_study", ".png", ".pdf"),
            caption="../report/samples_study.rst",
            category="Multiple samples",
        ),
        report(
            multiext("results/figures/training_curves", ".png", ".pdf"),
            caption="../report/training_curves.rst",
            category="Training",
        ),
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        prune=config["prune"],
        seeds=config["seeds"],
    log:
        "logs/report.log",
    threads: 1
    shell:
        "mapex --log {log} report --params {params.file} --runs results/runs --out results"
        " --samples {input.samples} --response-maps {input.response_maps} --history {input.history}"
