"""The tiny models' names, apart from the module that builds them (src/tiny/models.py, which
imports torch): a command that only asks whether a path is a tiny model (`--cfg job`,
`python -m src.assets list`) loads no model library."""

# what the pipeline and the demo run on; tiny-chat-judge, the benchmarks' judge, and tiny-rm32,
# the reward model vLLM serves, are built when asked for (by name, or by a config that points at
# them: conf/eval/tiny.yaml, conf/ranker/tiny-reward-model-vllm.yaml)
PIPELINE_NAMES = ("tiny-mistral", "tiny-gemma2", "tiny-pairrm", "tiny-rm", "tiny-judge")
TINY_NAMES = (*PIPELINE_NAMES, "tiny-chat-judge", "tiny-rm32")
