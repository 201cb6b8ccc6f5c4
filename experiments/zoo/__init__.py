"""Training and documenting the embedded default's off-the-shelf models."""
