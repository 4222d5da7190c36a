"""sqrl: speech-quality RL."""
