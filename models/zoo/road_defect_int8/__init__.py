"""The road-defect model package, int8 (data only: see ../road_defect/MODEL_CARD.md)."""
