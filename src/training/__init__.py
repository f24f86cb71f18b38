"""Preference training: the losses (losses.py), the policy's response log-probs with a streamed LM
head (policy_logps.py), pairs tokenised and collated (data.py), the Trainer (trainer.py), its
arguments (arguments.py) and the multi-process launch (launch.py). The stage that uses them is
src/stages/train.py (its launcher) and train_worker.py (each training process)."""

# The optimizers for bf16 weights (optimizers.py) step a parameter this many elements at a time,
# so that the step's fp32 temporaries stay a few times 64 MiB; here, without torch, so that the
# planner's memory model (src/plan/memory.py) reads the same figure
OPTIMIZER_SLICE = 1 << 24
