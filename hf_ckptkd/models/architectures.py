"""Small-image networks registered as timm models: CIFAR-style ResNets and wide ResNets.

ImageNet stems (stride-2 conv + max-pool) shrink a 28×28 or 32×32 input four times before the
first block, which leaves little to learn from; these networks keep full resolution in their
first stage, as in the paper's CIFAR-100 experiments (He et al. 2016; Zagoruyko & Komodakis 2016).

Registered names: `cifar_resnet8/14/20/32/56/110` (post-activation basic blocks, widths 16/32/64)
and `wrn_16_1/16_2/16_4/40_1/40_2/28_10` (pre-activation wide ResNets). Build them as any timm
model (`timm:cifar_resnet20`) once `hf_ckptkd` is imported; a saved folder loads with
`timm.create_model("local-dir:<folder>", pretrained=True)` in a process that imported
`hf_ckptkd.models.architectures` (timm knows only the names registered in the running process).
"""

from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model


class BasicBlock(nn.Module):
    """Two 3×3 convolutions; post-activation (ResNet) or pre-activation (wide ResNet)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, preact: bool, drop_rate: float = 0.0):
        super().__init__()
        self.preact = preact
        self.bn1 = nn.BatchNorm2d(in_chs if preact else out_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
            self.shortcut_bn = nn.Identity() if preact else nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            out = torch.relu(self.bn1(x))
            shortcut = x if self.shortcut is None else self.shortcut(out)
            out = self.conv2(self.drop(torch.relu(self.bn2(self.conv1(out)))))
            return out + shortcut
        shortcut = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + shortcut)


class CifarResNet(nn.Module):
    """A three-stage ResNet for small images: stem 3×3 conv, stages of widths w, 2w, 4w at strides 1, 2, 2."""

    def __init__(self, depth: int = 20, width: int = 1, preact: bool = False, base_width: int = 16,
                 num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6 if preact else (depth - 2) // 6
        widths = [base_width * width * 2**i for i in range(3)]
        self.num_classes, self.preact, self.grad_checkpointing = num_classes, preact, False
        self.stem = nn.Conv2d(in_chans, base_width, 3, 1, 1, bias=False)
        self.stem_bn = nn.Identity() if preact else nn.BatchNorm2d(base_width)
        stages, in_chs = [], base_width
        for i, out_chs in enumerate(widths):
            stage = [BasicBlock(in_chs if j == 0 else out_chs, out_chs, (1 if i == 0 else 2) if j == 0 else 1, preact,
                                drop_rate) for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*stage))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(in_chs) if preact else nn.Identity()
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x))
        x = x if self.preact else torch.relu(x)
        x = self.stages(x)
        return torch.relu(self.final_bn(x)) if self.preact else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
            "first_conv": "stem", "classifier": "fc", "license": "apache-2.0", **kwargs}


_VARIANTS = {
    **{f"cifar_resnet{d}": dict(depth=d, width=1, preact=False) for d in (8, 14, 20, 32, 56, 110)},
    **{f"wrn_{d}_{w}": dict(depth=d, width=w, preact=True) for d, w in ((16, 1), (16, 2), (16, 4), (40, 1), (40, 2), (28, 10))},
}
default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in _VARIANTS})
# The timm names this module registers (timm knows them only once hf_ckptkd is imported).
REGISTERED_ARCHITECTURES = frozenset(_VARIANTS)


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, **{**_VARIANTS[variant], **kwargs})


def _register(variant: str) -> None:
    def factory(pretrained: bool = False, **kwargs) -> CifarResNet:
        return _create(variant, pretrained, **kwargs)

    factory.__name__ = variant
    factory.__module__ = __name__
    factory.__doc__ = f"{variant}: {_VARIANTS[variant]}"
    register_model(factory)


for _variant in _VARIANTS:
    _register(_variant)
