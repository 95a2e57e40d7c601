"""Evaluation: image metrics and lip/blink metrics from MediaPipe landmarks on held-out frames."""
