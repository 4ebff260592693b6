"""Policies that act in the envs: scripted explorers, keyboard, RL agents."""
