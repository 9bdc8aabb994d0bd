"""From a bundle and a study to a prediction, explanations and a report; ONNX export."""
