"""The edge layer: what predicting with an exported model needs, and nothing heavier.

Decoding (``images``), the answers and their formats (``results``) and the shared classifier
(``model``) import numpy and Pillow only, never PyTorch, timm or matplotlib, so an ONNX file
predicts and serves on a small device with ``pip install "imagewise[runtime]"``.
"""
