"""The cascade's baseline: one 64 px EDM model (configs/experts_shapes.py:parent at 64 px), same data and text
encoder, the SR stage's U-Net body (configs/sr_shapes.py:cpu: [16, 32, 64, 64], attention only at 8x8) with 3
input channels and no class embedding. Arguments as experts_shapes (``steps=``).

  t2ijax train --config=experiments/cascade_shapes/single64.py:steps=1400 --workdir=runs/cascade_shapes/single64
"""

import os

from t2ijax.config_utils import import_sibling

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
experts_shapes = import_sibling(os.path.join(CONFIGS, "experts_shapes.py"), "experts_shapes")
sr_shapes = import_sibling(os.path.join(CONFIGS, "sr_shapes.py"), "sr_shapes")


def get_config(arg=None):
    c = experts_shapes.get_config(arg or "parent")
    c.data = sr_shapes.data_config(tiny=False)  # Shapes 64 px, dense captions (the cascade's eval data)
    unet = sr_shapes.unet(tiny=False)
    unet.update(in_channels=3)
    del unet["class_embed_type"]
    c.model.unet = unet
    return c
