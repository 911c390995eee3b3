"""Seeded demo data and tiny models built from configs (no hub access)."""
