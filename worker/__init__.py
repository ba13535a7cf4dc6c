"""Infernetes model server: one process = one allocation of one model."""
