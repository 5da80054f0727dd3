"""Converts the VGGFace2 SENet-50 PyTorch releases into fer_tf's Keras SE-ResNet-50.

Run `python -m weights_conversion --src senet50_ft_weight.pkl --dst senet50_ft.weights.h5`.
"""
