"""Gymnasium environments: the learned world and the real camera world on ViZDoom."""
