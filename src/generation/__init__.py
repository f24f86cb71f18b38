"""Sampling K responses from a policy: prompts (prompts.py), the samplers (sampling.py, hf_backend.py,
vllm_backend.py: vLLM's engine as a stream, started as vllm_engine.py says, its processes watched
by vllm_processes.py and vllm_watchdog.py). The stage that uses them is src/stages/generate.py."""
