"""Model packages shipped with cityneuron (model.onnx, model.yaml and a model card each)."""
