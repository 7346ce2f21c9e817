"""The aerial small-object model package (data only: see MODEL_CARD.md)."""
