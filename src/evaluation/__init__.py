"""Evaluating a policy: its answers, generated once and cached (answers.py), AlpacaEval's file
formats (alpaca_eval.py) and the win rates with their intervals (winrate.py). The stage that uses
them is src/stages/eval.py."""
