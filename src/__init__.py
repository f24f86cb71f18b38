"""Iterative self-play preference optimisation (SPPO, WPO, DPO) of chat LLMs."""

from src.core import kernels

kernels.pin()  # before anything loads torch: the same kernels, so the same bytes, on every CPU
