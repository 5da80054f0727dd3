"""A PyTorch reference SE-ResNet-50 with the module names of the VGGFace2 `.pkl` release.

Used only to verify conversions and to write test checkpoints in the releases'
exact on-disk formats; needs the optional ``torch`` extra. Mirrors
cydonia999/VGGFace2-pytorch's ``senet.py``: Caffe-style stride on the first 1x1
conv, SE convs with biases, a ceil-mode max pool.
"""

import torch
from torch import nn


class Bottleneck(nn.Module):
    """SE bottleneck: 1x1 (stride here) -> 3x3 -> 1x1, squeeze-excitation, residual."""

    expansion = 4

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv4 = nn.Conv2d(out, out // 16, 1, bias=True)
        self.conv5 = nn.Conv2d(out // 16, out, 1, bias=True)
        self.sigmoid = nn.Sigmoid()
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        u = self.relu(self.bn1(self.conv1(x)))
        u = self.relu(self.bn2(self.conv2(u)))
        u = self.bn3(self.conv3(u))
        gate = self.sigmoid(self.conv5(self.relu(self.conv4(self.global_pool(u)))))
        return self.relu(u * gate + residual)


class SENet(nn.Module):
    """SE-ResNet; ``blocks=(3, 4, 6, 3)`` and ``base_width=64`` give SENet-50."""

    def __init__(self, blocks=(3, 4, 6, 3), base_width=64, num_classes=8631, include_top=True):
        super().__init__()
        self.include_top = include_top
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        in_channels = base_width
        for stage, n in enumerate(blocks):
            width = base_width * 2**stage
            stride = 1 if stage == 0 else 2
            layers = []
            for i in range(n):
                downsample = None
                if i == 0:
                    downsample = nn.Sequential(
                        nn.Conv2d(in_channels, width * 4, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(width * 4),
                    )
                layers.append(Bottleneck(in_channels, width, stride if i == 0 else 1, downsample))
                in_channels = width * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if include_top:
            self.fc = nn.Linear(in_channels, num_classes)

    def stages(self, x):
        """Returns the outputs of stem (after max pool) and of every layerN."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = {"stem": x}
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
            outputs[f"layer{s}"] = x
        outputs["pooled"] = torch.flatten(self.avgpool(x), 1)
        if self.include_top:
            outputs["logits"] = self.fc(outputs["pooled"])
        return outputs

    def forward(self, x):
        out = self.stages(x)
        return out["logits"] if self.include_top else out["pooled"]


def senet50(num_classes=8631, include_top=True):
    """The VGGFace2 SENet-50 architecture, randomly initialised."""
    return SENet((3, 4, 6, 3), 64, num_classes, include_top)


def randomize_batchnorm(model, generator):
    """Gives every BatchNorm non-trivial affine parameters and running statistics.

    Freshly built BatchNorm layers are identities (mean 0, var 1, gamma 1, beta 0),
    which would hide a wrong epsilon or a swapped parameter order in a port.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                # Small variances make a wrong epsilon visible.
                m.running_var.copy_(0.05 + torch.rand(n, generator=generator))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
    return model
