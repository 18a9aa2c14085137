"""Initial weights: those of the ANODE paper's reference training script.

The reference code (github.com/amirgholami/anode, ``train.py``) builds a network with
PyTorch's default initialisation and then applies one function to every module:

* a convolution *with a bias*: weight Xavier-uniform with gain sqrt(2) (Glorot and Bengio
  2010, with the ReLU gain of He et al. 2015), i.e. uniform on ±sqrt(2)·sqrt(6 / (fan_in +
  fan_out)); bias 0;
* a batch normalisation: weight 1, bias 0 (PyTorch's default anyway);
* everything else (bias-free convolutions, the linear head) keeps PyTorch's default:
  Kaiming-uniform with a = sqrt(5), i.e. uniform on ±1/sqrt(fan_in), and a bias uniform on
  ±1/sqrt(fan_in).

So the ResNets (bias-free convolutions) start from PyTorch's defaults, and the
SqueezeNexts (convolutions with biases) from Xavier-uniform(sqrt(2)) with zero biases. We
keep this so that training runs start where the paper's did; with a batch normalisation
after every convolution the scale of a convolution's weights has little effect on the
forward pass, so there is no accuracy reason to change it.
"""

from __future__ import annotations

import math

from torch import nn


def reference_init(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place as the ANODE reference code does; return it.

    Convolutions with a bias (any ``nn.modules.conv._ConvNd``): Xavier-uniform weight with
    gain sqrt(2), zero bias. Batch normalisations (``nn.modules.batchnorm._BatchNorm``): weight
    1, bias 0. Other modules are left as they are.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None:
            nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2.0))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
