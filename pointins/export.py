"""``python -m pointins.export ckpt_path=FILE out=model.onnx``: the command line of the ONNX
export (:mod:`pointins.inference.export`)."""

from pointins.inference.export import OnnxPredictor, export_onnx, main

__all__ = ["OnnxPredictor", "export_onnx", "main"]

if __name__ == "__main__":
    main()
