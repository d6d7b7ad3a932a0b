"""Object detection and instance segmentation on bettervit backbones (torchvision's detection models).

Data (:mod:`.data`, :mod:`.scenes`), augmentation (:mod:`.transforms`) and COCO evaluation (:mod:`.evaluate`) are
plain modules; nothing here imports torchvision at import time.
"""
