"""Preference training: the losses (losses.py), the policy's response log-probs with a streamed LM
head (policy_logps.py), pairs tokenised and collated (data.py), the Trainer (trainer.py), its
arguments (arguments.py) and the multi-process launch (launch.py). The stage that uses them is
src/stages/train.py (its launcher) and train_worker.py (each training process)."""
