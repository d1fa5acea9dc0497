# kvwire: when and how to compress a KV cache before it crosses the wire.
# Study: models x prompts x codecs x bandwidths. See README.md and docs/ARCHITECTURE.md.
from snakemake.utils import min_version

min_version("9.0")


# The default study, unless --configfile names another (Snakemake would otherwise merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/codecs.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/timing.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/router.smk"
include: "workflow/rules/offload.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
