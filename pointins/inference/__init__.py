"""Inference on images: :class:`~.predictor.Predictor` (checkpoint to detections in the
original image), ``eval.py predict`` (:mod:`.predict`), the ONNX export (:mod:`.export`) and
drawing (:mod:`.visualize`)."""
