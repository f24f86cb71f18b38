"""`python -m src.tiny [--cache-dir DIR] [--seed N] [--force] [NAME ...]`: build the tiny models."""

from src.tiny.models import main

main()
