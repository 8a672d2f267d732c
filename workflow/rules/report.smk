rule report:
    """Tables and figures from the result files alone: rerunning it retrains nothing."""
    input:
        runs=run_files("results/runs", ".json"),
        sanity=expand("results/sanity/{task}.csv", task=TASKS),
        extra_sanity=extra_sanity_files(),
        sensitivity=expand("results/sensitivity/{task}.csv", task=TASKS),
        latency="results/latency.csv",
        samples="results/samples_study.csv",
        response_maps="work/response_maps.npz",
        history="results/baseline/history.csv",
    output:
        multiext("results/tables/summary", ".csv", ".md", ".json"),
        multiext("results/tables/comparisons", ".csv", ".md"),
        multiext("results/tables/sanity", ".csv", ".md"),
        multiext("results/tables/sanity_baselines", ".csv", ".md"),
        multiext("results/tables/latency", ".csv", ".md"),
        report(
            multiext("results/figures/accuracy_vs_ratio", ".png", ".pdf"),
            caption="../report/accuracy_vs_ratio.rst",
            category="Accuracy",
        ),
        report(
            multiext("results/figures/paired_differences", ".png", ".pdf"),
            caption="../report/paired_differences.rst",
            category="Accuracy",
        ),
        report(
            multiext("results/figures/accuracy_vs_macs", ".png", ".pdf"),
            caption="../report/accuracy_vs_macs.rst",
            category="Accuracy",
        ),
        report(
            multiext("results/figures/sanity_check", ".png", ".pdf"),
            caption="../report/sanity_check.rst",
            category="Sanity checks",
        ),
        report(
            multiext("results/figures/layer_sensitivity", ".png", ".pdf"),
            caption="../report/layer_sensitivity.rst",
            category="Sanity checks",
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
        tasks=TASKS,
        extra_baseline_seeds=config["sanity"]["extra_baseline_seeds"],
    log:
        "logs/report.log",
    threads: 1
    shell:
        "mapex --log {log} report --params {params.file} --runs results/runs --out results"
        " --sanity results/sanity --sensitivity results/sensitivity --latency {input.latency}"
        " --samples {input.samples} --response-maps {input.response_maps} --history {input.history}"
