"""Infernetes control plane: spec models, gateway, planner, autoscaler, runtimes, CLI."""
