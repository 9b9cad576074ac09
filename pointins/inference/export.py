"""Export a trained PointINS model to ONNX, and run the exported file.

    python -m pointins.export ckpt_path=FILE [out=model.onnx] [opset=17] [dynamic=true]

The graph holds the whole inference path of one image: backbone, FPN, detector head,
score threshold, per-level top-k, class-wise NMS, the mask module on the kept detections
(template, instance-aware weights, dynamic conv, mask head) and, with
``model.mask.maskness``, the rescoring. PointINS's dynamic conv is a batched matrix
product (``MatMul``), so no convolution with runtime weights is needed.

Inputs:
    ``image``       ``(1, 3, H, W)`` float32: resized, normalised and zero-padded to a
                    multiple of ``size_divisibility``, exactly as :class:`Preprocess` does;
                    ``H`` and ``W`` are dynamic (``dynamic=false`` fixes them to ``size``).
    ``image_size``  ``(2,)`` int64: the resized image's ``(h, w)`` before padding.
Outputs, by decreasing score:
    ``boxes`` ``(n, 4)`` xyxy in resized-image pixels, ``scores`` ``(n,)``,
    ``labels`` ``(n,)`` int64, and with masks ``mask_probs`` ``(n, S, S)``: each
    detection's box-relative mask probabilities.

What stays in Python (:class:`OnnxPredictor`): reading and resizing the image, scaling the
boxes to the original image and pasting the masks at its resolution (a per-image,
per-box resampling). The file's metadata holds the preprocessing, class names, dataset
category ids and the mask threshold, so :class:`OnnxPredictor` needs nothing else.

The exporter is torch.onnx's TorchScript-based one (``dynamo=False``; PyTorch warns that it
is deprecated). The torch.export-based default would need every data-dependent size (the
candidates above the score threshold, NMS's survivors, the detections fed to the mask
module) hinted by hand; tracing records them as ONNX ``NonZero``, ``TopK`` and
``NonMaxSuppression`` with dynamic output sizes. Its advanced-indexing warning concerns
negative indices, which this path never produces (indices come from ``nonzero``, ``topk``
and clamped locations).

Batch size 1: the exported graph is what a deployment serves per request; GroupNorm towers
make a detection depend on the padded batch anyway.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf
from torch import Tensor, nn

from pointins.inference.predictor import ImageLike, Prediction, load_image
from pointins.mask.paste import paste_masks
from pointins.mask.template_branch import BoxTemplateBranch
from pointins.model import PointINS
from pointins.preprocess import Preprocess

log = logging.getLogger(__name__)

INPUTS = ("image", "image_size")
DETECTION_OUTPUTS = ("boxes", "scores", "labels")


def fixed_input_size(preprocess: Preprocess, size: Sequence[int] | None) -> tuple[int, int]:
    """The input ``(H, W)`` of a fixed-size export: ``size``, a multiple of
    ``size_divisibility``; by default ``max_size`` square rounded up, which holds every
    resized image (each is zero-padded to it)."""
    div = preprocess.size_divisibility
    if size is None:
        side = -(-preprocess.max_size // div) * div
        return side, side
    height, width = (int(v) for v in size)
    if height % div or width % div:
        raise ValueError(f"size={[height, width]} must be multiples of size_divisibility={div}")
    return height, width


class InferenceGraph(nn.Module):
    """PointINS's inference on one padded image, as a traceable module:
    ``(image (1, 3, H, W), image_size (2,)) -> boxes, scores, labels[, mask_probs]``."""

    def __init__(self, model: PointINS) -> None:
        super().__init__()
        if not isinstance(model, PointINS):
            raise TypeError(
                f"ONNX export covers PointINS models, not {type(model).__name__} (the "
                "torchvision baselines export with torchvision's own tooling)"
            )
        self.model = model
        # the whole graph in eval mode: torch.onnx.export restores the mode it found, and a
        # wrapper left in training mode would switch the model's BatchNorm to batch statistics
        self.eval()

    def forward(self, image: Tensor, image_size: Tensor) -> tuple[Tensor, ...]:
        det = self.model.detect(image, image_size[None])[0]  # (h, w) clip the boxes
        outputs = (det.boxes, det.scores, det.labels)
        if det.masks is not None:
            outputs += (det.masks,)  # (n, S, S) probabilities
        return outputs


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the optional packages onnx and onnxruntime: "
            f"pip install -e '.[export]' ({err})"
        ) from err


def export_onnx(
    model: PointINS,
    preprocess: Preprocess,
    out: str | Path,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    opset: int = 17,
    dynamic: bool = True,
    size: Sequence[int] | None = None,
    example: Tensor | None = None,
) -> Path:
    """Write ``model`` as ONNX to ``out`` and check it with ``onnx.checker``.

    Args:
        preprocess: what the model was trained with (stored in the file's metadata).
        dynamic: input height and width dynamic; ``False`` fixes them to ``size``.
        size: ``(H, W)`` of the fixed input (:func:`fixed_input_size`).
        example: a ``(3, h, w)`` uint8 image to trace with instead of a synthetic one
            (tracing records the same graph for any image; a real one exercises the
            mask branch with detections).
    """
    onnx = _require("onnx")
    if opset < 16 and any(isinstance(m, BoxTemplateBranch) for m in model.modules()):
        raise ValueError(
            f"opset={opset}: templates read from the box (model.mask.template_from=box) use "
            "RoIAlign with aligned=True, which ONNX has from opset 16; export with opset=16 "
            "or higher"
        )
    graph = InferenceGraph(model.cpu())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if example is None:  # a synthetic image: the traced graph is the same for any
        generator = torch.Generator().manual_seed(0)
        side = preprocess.test_scale
        example = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
    image, sizes = preprocess.batch([example])  # (1, 3, Hp, Wp)
    if not dynamic:
        height, width = fixed_input_size(preprocess, size)
        if image.shape[-2] > height or image.shape[-1] > width:
            raise ValueError(f"size={list(size)} is smaller than the example image's input")
        image = nn.functional.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))
    image_size = torch.tensor(sizes[0], dtype=torch.int64)
    output_names = list(DETECTION_OUTPUTS) + (["mask_probs"] if model.mask is not None else [])
    dynamic_axes = {name: {0: "detections"} for name in output_names}
    if dynamic:
        dynamic_axes["image"] = {2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer flags every Python value it records as a constant; in this path they
        # are constants by construction (strides, shape checks, the batch of one), and the
        # sizes that vary are traced (tests/test_export.py runs other sizes than traced)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (image, image_size),
            str(out),
            input_names=list(INPUTS),
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    metadata = {
        "preprocess": json.dumps(preprocess.to_dict()),
        "class_names": json.dumps(list(class_names)),
        "category_ids": json.dumps(
            list(range(1, len(class_names) + 1)) if category_ids is None else list(category_ids)
        ),
        "mask_thresh": json.dumps(getattr(model, "mask_thresh", 0.5)),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    log.info("wrote %s (opset %d, %s input size)", out, opset, "dynamic" if dynamic else "fixed")
    return out


class OnnxPredictor:
    """Runs an exported file with onnxruntime: ``predictor(image)`` -> :class:`Prediction`
    like :class:`~pointins.inference.predictor.Predictor`, the resize before and the box scaling and
    mask pasting after the graph done in Python."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        ort = _require("onnxruntime")
        self.runtime = ort.InferenceSession(
            str(path), providers=list(providers or ["CPUExecutionProvider"])
        )
        meta = self.runtime.get_modelmeta().custom_metadata_map
        self.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.category_ids: list[int] = json.loads(meta["category_ids"])
        self.mask_thresh = float(json.loads(meta["mask_thresh"]))
        self.output_names = [o.name for o in self.runtime.get_outputs()]
        height, width = self.runtime.get_inputs()[0].shape[-2:]
        # a fixed-size export: every image is zero-padded to the traced canvas
        fixed = isinstance(height, int) and isinstance(width, int)
        self.canvas = (height, width) if fixed else None

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        single = not isinstance(images, (list, tuple))
        results = [self.predict_loaded(load_image(x)) for x in ([images] if single else images)]
        return results[0] if single else results

    def predict_loaded(self, image: Tensor) -> Prediction:
        """The prediction of one ``(3, H0, W0)`` RGB image (uint8, or float in [0, 1])."""
        batch, sizes = self.preprocess.batch([image])  # (1, 3, Hp, Wp)
        return self.predict_padded(batch, sizes[0], tuple(image.shape[-2:]))

    def predict_padded(
        self, image: Tensor, size: tuple[int, int], orig_size: tuple[int, int]
    ) -> Prediction:
        """The prediction of one preprocessed ``(1, 3, Hp, Wp)`` image whose resized size
        is ``size`` and original size ``orig_size``."""
        if self.canvas is not None:
            pad = (0, self.canvas[1] - image.shape[-1], 0, self.canvas[0] - image.shape[-2])
            image = nn.functional.pad(image, pad)  # (1, 3, H, W) of the export
        (h, w), (h0, w0) = size, orig_size
        feeds = {"image": image.numpy(), "image_size": np.asarray([h, w], dtype=np.int64)}
        outputs = dict(zip(self.output_names, self.runtime.run(None, feeds), strict=True))
        boxes = torch.from_numpy(outputs["boxes"]) * torch.tensor([w0 / w, h0 / h] * 2)
        labels = torch.from_numpy(outputs["labels"]).long()
        masks = None
        if "mask_probs" in outputs:
            probs = torch.from_numpy(outputs["mask_probs"])
            masks = paste_masks(probs, boxes, (h0, w0), self.mask_thresh)
        return Prediction(
            boxes=boxes,
            scores=torch.from_numpy(outputs["scores"]),
            labels=labels,
            class_names=[self.class_names[i] for i in labels.tolist()],
            masks=masks,
            image_size=(h0, w0),
        )


@dataclass
class ExportOptions:
    """``python -m pointins.export key=value ...``"""

    ckpt_path: str = MISSING  # a train.py checkpoint of PointINS
    out: str = "model.onnx"
    opset: int = 17
    dynamic: bool = True  # dynamic input height and width; false: fixed to size
    size: Any = None  # [H, W] of a fixed input; null: max_size square (holds every image)
    image: Any = None  # an image file to trace with (default: a synthetic one)


def main(argv: Sequence[str] | None = None) -> Path:
    from pointins.engine.loading import load_module

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        print(OmegaConf.to_yaml(OmegaConf.structured(ExportOptions)))
        raise SystemExit(0)
    bad = [a for a in args if "=" not in a]
    if bad:
        raise SystemExit(f"arguments are key=value (e.g. ckpt_path=FILE), got {bad}")
    try:
        options = OmegaConf.merge(OmegaConf.structured(ExportOptions), OmegaConf.from_dotlist(args))
        ckpt_path = options.ckpt_path
    except Exception as err:  # unknown key, wrong type, ckpt_path missing
        detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise SystemExit(f"pointins.export: {detail}") from err
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    module = load_module(ckpt_path)
    if module.preprocess is None:
        raise SystemExit(
            f"checkpoint {ckpt_path} stores no preprocessing (an older version wrote it); "
            "export needs it in the file's metadata: retrain, or evaluate it with eval.py"
        )
    example = None if options.image is None else load_image(options.image)
    return export_onnx(
        module.model,
        module.preprocess,
        options.out,
        module.class_names,
        module.category_ids,
        opset=options.opset,
        dynamic=options.dynamic,
        size=options.size,
        example=example,
    )


if __name__ == "__main__":
    main()
