"""Judging responses: the judges (judge.py, pairrm.py, reward_model.py, blender_compat.py), the
candidates of a prompt (candidates.py) and the win-probability maths (preferences.py). The stage
that uses them is src/stages/rank.py."""
