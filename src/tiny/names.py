"""The tiny models' names, apart from the module that builds them (src/tiny/models.py, which
imports torch): a command that only asks whether a path is a tiny model (`--cfg job`,
`python -m src.assets list`) loads no model library."""

# what the pipeline and the demo run on; tiny-chat-judge, the benchmarks' judge, is built when
# asked for (by name, or by a config that serves it: conf/eval/tiny.yaml)
PIPELINE_NAMES = ("tiny-mistral", "tiny-gemma2", "tiny-pairrm", "tiny-rm", "tiny-judge")
TINY_NAMES = (*PIPELINE_NAMES, "tiny-chat-judge")
