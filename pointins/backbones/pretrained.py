"""Where a backbone's ImageNet weights come from: a local file, timm's cache, or the network.

``resolve_weights`` returns a local file, so the backbone always loads from disk: a file
already in timm's cache is used without asking the network (the hub client would first
retry the network for most of a minute), and without network or cache the run stops at
once, before any data is read, with one message that names the options to set.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from timm.models import get_pretrained_cfg

log = logging.getLogger(__name__)

# The file names timm reads from a Hugging Face hub repository, in its order of preference.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and can be neither found nor downloaded."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache timm reads (``HF_HUB_CACHE`` / ``HF_HOME`` move it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint folder, timm's cache for weights published by URL only."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(name: str, pretrained: bool, checkpoint_path: str | None) -> Path | None:
    """The local file holding ``name``'s weights, or ``None`` for random initialisation.

    Args:
        name: timm model name with its weights tag (``resnet50.tv_in1k``).
        pretrained: use timm's published weights for ``name``.
        checkpoint_path: a local weights file instead (a torchvision or timm state dict,
            bare or under ``state_dict``/``model``; ``.pth``/``.pt``/``.bin``/``.safetensors``).

    Raises:
        FileNotFoundError: ``checkpoint_path`` does not exist.
        WeightsUnavailableError: ``pretrained`` weights are neither cached nor downloadable.
    """
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"model.backbone.checkpoint_path={str(path)!r} does not exist; pass a local "
                "weights file (a torchvision or timm state dict)"
            )
        return path
    if not pretrained:
        return None
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know
        cfg = None
    if cfg is None:
        raise ValueError(
            f"model.backbone.name={name!r} has no published weights in timm; pick a tagged "
            f"name from timm.list_pretrained('{name.split('.')[0]}*'), or set "
            "model.backbone.checkpoint_path=FILE"
        )
    cached = _cached_file(cfg.hf_hub_id, cfg.url)
    if cached is not None:
        log.info("Backbone weights for %s: %s (cached)", name, cached)
        return cached
    if _offline(cfg.hf_hub_id, cfg.url):
        raise WeightsUnavailableError(_unavailable_message(name))
    path = _download(cfg.hf_hub_id, cfg.url)
    log.info("Backbone weights for %s downloaded to %s", name, path)
    return path


def _url_file(url: str) -> Path:
    """Where torch.hub (and timm, for weights published by URL only) keeps ``url``'s file."""
    return torch_hub_dir() / Path(urlparse(url).path).name


def _cached_file(hf_hub_id: str | None, url: str | None) -> Path | None:
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in _HUB_FILES:
            found = try_to_load_from_cache(hf_hub_id, filename, cache_dir=hub_cache_dir())
            if isinstance(found, str):
                return Path(found)
    if url:
        path = _url_file(url)
        if path.is_file():
            return path
    return None


def _offline(hf_hub_id: str | None, url: str | None) -> bool:
    """True when the weights' host cannot be reached (or HF_HUB_OFFLINE asks not to try)."""
    from huggingface_hub import constants

    if hf_hub_id:
        if constants.HF_HUB_OFFLINE:
            return True
        host = urlparse(constants.ENDPOINT).hostname
    else:
        host = urlparse(url or "").hostname
    if not host:
        return True
    try:
        socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        return True
    return False


def _download(hf_hub_id: str | None, url: str | None) -> Path:
    try:
        if hf_hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for filename in _HUB_FILES:
                try:
                    return Path(hf_hub_download(hf_hub_id, filename))
                except EntryNotFoundError:
                    continue
            raise FileNotFoundError(f"no weights file {_HUB_FILES} in hub repository {hf_hub_id}")
        path = _url_file(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path))
        return path
    except Exception as err:  # a network failure half-way is the same situation as offline
        raise WeightsUnavailableError(f"{_unavailable_message(hf_hub_id or url)} ({err})") from err


def _unavailable_message(name: str) -> str:
    arch = name.split(".")[0].split("/")[-1]
    return (
        f"No ImageNet weights for backbone {name!r}: not in timm's cache ({hub_cache_dir()}, "
        f"or {torch_hub_dir()}) and the network cannot be reached. Either set "
        f"model.backbone.checkpoint_path=FILE (a torchvision or timm state dict, e.g. saved "
        f"elsewhere with `torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
        f"'{arch}.pth')`), or copy timm's cache folder to {hub_cache_dir()} "
        "(HF_HUB_CACHE moves it), or train from random weights with "
        "model.backbone.pretrained=false model.backbone.norm=gn (not the paper's set-up)."
    )


__all__ = ["WeightsUnavailableError", "hub_cache_dir", "resolve_weights", "torch_hub_dir"]
