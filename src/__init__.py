"""Iterative self-play preference optimisation (SPPO, WPO, DPO) of chat LLMs."""
