"""Where the backbone's ImageNet weights come from: a local file (torchvision or timm state
dict), timm's cache without asking the network, or a clear stop when neither is there."""

from __future__ import annotations

import socket
import time

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from pointins.backbones import TimmBackbone
from pointins.backbones import pretrained as pretrained_mod
from pointins.backbones.pretrained import WeightsUnavailableError, resolve_weights

NAME = "resnet18.tv_in1k"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine without network."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network unreachable: {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache of this test's own."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(pretrained_mod, "torch_hub_dir", lambda: tmp_path / "torch_hub")
    return cache


def _put_in_hub_cache(cache, repo_id: str, state_dict: dict) -> None:
    """The layout huggingface_hub writes: refs/main names the snapshot holding the file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, snapshot / "model.safetensors")


def _marked_resnet18() -> dict[str, torch.Tensor]:
    model = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        model.conv1.weight.fill_(0.25)
        model.layer3[0].conv2.weight.fill_(-0.5)
    return model.state_dict()


def test_cached_weights_load_without_asking_the_network(hub_cache, no_network):
    _put_in_hub_cache(hub_cache, "timm/resnet18.tv_in1k", _marked_resnet18())
    backbone = TimmBackbone(NAME, pretrained=True)
    assert no_network == []  # the cache was enough: not even a probe
    assert torch.all(backbone.body.conv1.weight == 0.25)
    assert torch.all(backbone.body.layer3[0].conv2.weight == -0.5)
    assert backbone.norm == "frozen_bn"  # auto: loaded weights get frozen BatchNorm
    assert not any(p.requires_grad for p in backbone.body.layer1.parameters())


def test_offline_without_cache_stops_at_once_naming_the_options(hub_cache, no_network):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(NAME, pretrained=True, checkpoint_path=None)
    assert time.perf_counter() - start < 5  # no retries
    message = str(err.value)
    assert "model.backbone.checkpoint_path=FILE" in message
    assert str(hub_cache) in message  # the folder timm reads
    assert "model.backbone.pretrained=false" in message
    assert len(no_network) == 1  # one probe, no retries


def test_hub_offline_mode_does_not_probe(hub_cache, no_network, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="model.backbone.checkpoint_path"):
        resolve_weights(NAME, pretrained=True, checkpoint_path=None)
    assert no_network == []


def test_torchvision_state_dict_file_loads(tmp_path, no_network):
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        tv.layer2[1].conv1.weight.fill_(0.125)
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv.state_dict(), path)
    backbone = TimmBackbone(NAME, pretrained=True, checkpoint_path=str(path))
    for name, tensor in backbone.body.state_dict().items():
        if name in tv.state_dict() and "num_batches_tracked" not in name:
            assert torch.equal(tensor, tv.state_dict()[name]), name
    assert torch.all(backbone.body.layer2[1].conv1.weight == 0.125)
    assert no_network == []


def test_timm_checkpoint_wrapped_and_prefixed_loads(tmp_path):
    """A training checkpoint's layout: the state dict under ``state_dict``, DDP's prefix."""
    state = {f"module.{k}": v for k, v in _marked_resnet18().items()}
    path = tmp_path / "resnet18-timm.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    backbone = TimmBackbone(NAME, pretrained=False, checkpoint_path=str(path))
    assert torch.all(backbone.body.conv1.weight == 0.25)
    assert backbone.norm == "frozen_bn"


def test_weights_of_another_architecture_name_the_option(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match="model.backbone.checkpoint_path"):
        TimmBackbone(NAME, checkpoint_path=str(path))


def test_missing_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.backbone.checkpoint_path"):
        resolve_weights(NAME, pretrained=True, checkpoint_path=str(tmp_path / "none.pth"))


def test_random_initialisation_needs_no_file(no_network):
    assert resolve_weights(NAME, pretrained=False, checkpoint_path=None) is None
    assert no_network == []


def test_name_without_published_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="model.backbone.name"):
        resolve_weights("resnet18.no_such_tag", pretrained=True, checkpoint_path=None)
