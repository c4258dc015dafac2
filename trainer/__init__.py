"""Training (``fit``) and measurement (``evaluate``) of the face-embedding model."""
