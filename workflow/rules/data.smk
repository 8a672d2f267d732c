rule fetch:
    """Download or copy the dataset archive, verify its sha256 and extract it atomically."""
    output:
        directory(DATA),
    conda:
        "../envs/mapex.yaml"
    params:
        file=PARAMS,
        data=config["data"]["source"] + config["data"]["sha256"],
    log:
        "logs/fetch.log",
    shell:
        "mapex --log {log} fetch --params {params.file} --out {output}"
