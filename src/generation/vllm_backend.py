"""vLLM generation (GPU machines; `make install-vllm`): the interface and output of the HF backend.

Each (prompt, sample) is its own request with the seed the HF backend would use, so a response
does not depend on what else was batched; vLLM's prefix caching lets the K requests of a prompt
share its prefill. Tensor parallelism spans `generation.tensor_parallel_size` GPUs.
"""

from __future__ import annotations

from src.config import GenerationConfig
from src.core.errors import StageError
from src.generation.hf_backend import Sample, sample_seed


class VLLMGenerator:
    def __init__(self, g: GenerationConfig, path: str, trust_remote_code: bool, eos_ids: list[int]):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise StageError(
                "generation=vllm needs vLLM, which is not installed: on a GPU machine run "
                "`make install-vllm` (pip install '.[vllm]'), or use generation=hf"
            ) from exc
        self.sampling_params = SamplingParams
        self.eos_ids = eos_ids
        self.g = g
        self.llm = LLM(
            model=path,
            tensor_parallel_size=g.tensor_parallel_size,
            gpu_memory_utilization=g.gpu_memory_utilization,
            enable_prefix_caching=True,
            trust_remote_code=trust_remote_code,
            seed=0,
        )

    def __call__(
        self, prompt_ids: list[list[int]], prompt_keys: list[str], base_seeds: list[int]
    ) -> list[list[Sample]]:
        g = self.g
        requests, params = [], []
        for ids, key in zip(prompt_ids, prompt_keys, strict=True):
            for s in base_seeds:
                requests.append({"prompt_token_ids": ids})
                params.append(
                    self.sampling_params(
                        n=1,
                        temperature=g.temperature,
                        top_p=g.top_p,
                        max_tokens=g.max_new_tokens,
                        seed=sample_seed(s, key),
                        stop_token_ids=self.eos_ids,
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = []
        for out in outputs:
            o = out.outputs[0]
            stopped = o.finish_reason == "stop"
            samples.append(Sample(o.text, "stop" if stopped else "length", len(o.token_ids)))
        k = len(base_seeds)
        return [samples[i * k : (i + 1) * k] for i in range(len(prompt_ids))]
