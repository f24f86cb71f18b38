"""The stages of an iteration, one module each: generate, rank, pairs, train, eval. Each is a
`run(cfg)` that reads setup -> run -> cleanup (and cards.py, the model card that train and eval
write beside the checkpoint); what each one is to the rest of the project (its
inputs, order, sharding, GPUs) is declared in src/core/registry.py."""
