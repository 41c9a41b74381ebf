"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", TIP 2017) as SaoYan/DnCNN-PyTorch publishes it.

Written from the published structure so that its ``net.pth`` loads as it is: one ``nn.Sequential`` named
``dncnn`` of a conv + ReLU, ``num_of_layers - 2`` × (conv, BatchNorm, ReLU) and a conv back to ``channels``; 3×3
kernels, 64 features, no biases. The network takes a noisy image in [0, 1] and returns the **noise**: the
denoised image is ``x - net(x)`` (a recipe says so with ``teacher.residual: subtract``).
"""

import torch.nn as nn


class DnCNN(nn.Module):
    def __init__(self, channels: int = 1, num_of_layers: int = 17, features: int = 64):
        super().__init__()
        layers = [nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False), nn.ReLU(inplace=True)]
        for _ in range(num_of_layers - 2):
            layers += [
                nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(features, channels, kernel_size=3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return self.dncnn(x)
