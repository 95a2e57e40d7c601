"""Speech features: the per-frame audio encoders and their settings (below both prepare and the model)."""
