"""Training of forgetting adapters: the recipe registry and one self-contained module per recipe."""
