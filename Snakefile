# mobileclip-repro: fetch/synthesize -> (reinforce) -> train -> evaluate -> report.
# The experiment is chosen with --configfile (default: the embedded toy world, configs/toy.yaml).
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/reinforce.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        EXP.report_outputs(),
