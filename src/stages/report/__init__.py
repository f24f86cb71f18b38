"""What reports on the stages, none of them a stage: each stage's W&B run (tracking.py), with its
tables (tables.py) and artifacts (chain.py); the lineage's curve run (curves.py); an iteration's
figures as its finished stages wrote them, which the curve run and `python -m src.compare` read
(results.py); the model card of a checkpoint (cards.py)."""
