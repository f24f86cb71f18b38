"""src/config: the Hydra config tree, its schemas and every composition."""
