"""Video to subject folder: landmarks, tracking, masks, background, signals, audio features."""
