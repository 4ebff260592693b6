"""The pygame window for exploring a learned world with keyboard and mouse."""
