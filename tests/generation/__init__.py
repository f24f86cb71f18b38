"""src/generation: prompts, the HF and vLLM backends."""
