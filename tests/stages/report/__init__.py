"""src/stages/report: the model card, W&B tracking, the curve run, tables and artifacts."""
