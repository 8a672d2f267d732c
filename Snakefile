# The workflow lives in workflow/ (the Snakemake workflow template layout); this file lets a
# plain `snakemake --cores all` at the top of the repository find it.
include: "workflow/Snakefile"


rule default:
    default_target: True
    input:
        rules.all.input,
