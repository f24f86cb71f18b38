"""src/evaluation: AlpacaEval, MT-Bench, Arena-Hard, the leaderboard, the judges."""
