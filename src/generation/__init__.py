"""Sampling K responses from a policy: prompts (prompts.py), the samplers (sampling.py, hf_backend.py,
vllm_backend.py). The stage that uses them is src/stages/generate.py."""
