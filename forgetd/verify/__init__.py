"""Forgetting and utility metrics per family, and the policy checks built on them (DESIGN 11)."""
