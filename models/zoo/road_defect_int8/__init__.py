"""The road-defect model package (data only: see MODEL_CARD.md)."""
