"""Small-image networks (CIFAR-style wide ResNets and ResNets) registered as timm models.

ImageNet stems downsample 28×28 / 32×32 inputs four times at once; these keep full resolution in
the first stage. Filled in by the recipes that need them.
"""
