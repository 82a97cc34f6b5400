"""wrnlib: Wide-ResNet compression on CIFAR by knowledge distillation and node pruning."""

__version__ = "0.1.0"
