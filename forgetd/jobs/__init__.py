"""Durable pipeline work: the leased queue, job kinds, the planner, executors and the daemon (DESIGN 8)."""
