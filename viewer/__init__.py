"""The pygame window for exploring a learned world with keyboard and mouse."""

import os

# Before anything imports pygame: the viewer plays no sound, and without a sound card SDL's ALSA
# probe prints a screen of errors; the support banner is noise in a tool's output. A user's own
# settings win.
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
