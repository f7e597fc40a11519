"""The CIFAR-10 networks labkit trains: a small residual CNN at airbench94's widths, and DeepSpeedExamples' LeNet."""

from __future__ import annotations

from labkit.errors import check_choice

MODELS = ("resnet", "lenet")


def build_model(name: str, width: float = 1.0, num_classes: int = 10):
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet(nn.Module):
        """DeepSpeedExamples' cifar10_deepspeed.py network (62,006 parameters), for comparison."""

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))

    class ConvBlock(nn.Module):
        """airbench94's block (conv, max-pool, BN, GELU, conv, BN, GELU) with a skip around its second conv."""

        def __init__(self, cin: int, cout: int):
            super().__init__()
            # BN momentum 0.4 (airbench's 0.6 in the other convention): running statistics settle within the few
            # hundred steps of a short run, so test accuracy is not held back by stale statistics
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4)

        def forward(self, x):
            x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
            return x + F.gelu(self.bn2(self.conv2(x)))

    class CifarResNet(nn.Module):
        """A small residual CNN at airbench94's widths (~2M parameters at width 1): 32 -> 31 -> 15 -> 7 -> 3 px."""

        def __init__(self):
            super().__init__()
            stem, w1, w2, w3 = (max(4, round(c * width)) for c in (24, 64, 256, 256))
            self.stem = nn.Conv2d(3, stem, kernel_size=2)  # 2x2 patches, like airbench's whitening layer
            self.blocks = nn.Sequential(ConvBlock(stem, w1), ConvBlock(w1, w2), ConvBlock(w2, w3))
            self.head = nn.Linear(w3, num_classes, bias=False)

        def forward(self, x):
            x = self.blocks(F.gelu(self.stem(x)))
            return self.head(F.adaptive_max_pool2d(x, 1).flatten(1))

    return {"lenet": LeNet, "resnet": CifarResNet}[check_choice("model", name, MODELS)]()
