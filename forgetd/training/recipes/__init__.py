"""One self-contained module per unlearning method. Duplication between recipes beats a clever base
class: each file can be read, changed and benchmarked on its own."""
