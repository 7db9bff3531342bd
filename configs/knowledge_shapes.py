"""ERNIE-ViLG 2.0's knowledge-enhanced training on Shapes 32x32 (issue 15 experiment), and the model the
paint-with-words experiment paints with.

The U-Net, text encoder and recipe are the CPU demo's (configs/demo_shapes.py: 1.03M-param pixel-space U-Net,
x0 prediction, cosine schedule, attention at 8x8), trained on the SHORT captions ("a red circle and a blue
square") from which each object is left out with probability `drop` (0.3): a stand-in for the incomplete
captions of web image-text pairs, which ERNIE's caption completion repairs. Variants (``:variant,key=value``):

  plain          no knowledge (the baseline)
  full           key-token emphasis (w_a 0.01 on 50% of examples, post-softmax) + region-weighted loss
                 (w_l 0.1 on 50%, object masks) + caption completion (the annotated objects missing from the
                 caption are appended)
  no_key         full without key-token emphasis
  no_region      full without region weighting
  no_completion  full without caption completion
  experts4       ERNIE's mixture of denoising experts grown from `plain` (4 equal DDPM timestep blocks, one jitted
                 step for all, each expert its own batch of 16; ``--config.init_from=<plain run>``): the expert
                 ensemble the paint-with-words experiment also paints with
  tiny           a few steps of `full` at the demo's tiny size (tests, smoke runs)

Options: steps=<int> (default 1000; experts4: 250), drop=<float>, key_weight=<float>, region_weight=<float>,
placement=post_softmax|renormalised|logits (where the key-token factor sits; `t2ijax.methods.knowledge`).

Launch (see experiments/knowledge_shapes/run.sh):
  t2ijax train --config=configs/knowledge_shapes.py:full --workdir=runs/knowledge_shapes/full
  t2ijax eval --config=configs/knowledge_shapes.py:full --workdir=runs/knowledge_shapes/full --split=validation
  t2ijax train --config=configs/knowledge_shapes.py:experts4 --workdir=runs/knowledge_shapes/experts4 \
      --config.init_from=runs/knowledge_shapes/plain
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

demo = import_sibling(__file__, "demo_shapes")

VARIANTS = ("plain", "full", "no_key", "no_region", "no_completion", "experts4", "tiny")


def get_config(arg=None):
    arg = parse_arg(arg, variant="full", steps=0, drop=0.3, key_weight=0.01, region_weight=0.1,
                    placement="post_softmax")
    if arg.variant not in VARIANTS:
        raise ValueError(f"knowledge_shapes variant {arg.variant!r}; choose one of {VARIANTS}")
    tiny = arg.variant == "tiny"
    c = demo.get_config("tiny" if tiny else "cpu")
    del c["demo"]
    if not tiny:
        c.total_steps = arg.steps or (250 if arg.variant == "experts4" else 1000)
        c.checkpoint_every = c.total_steps
    c.data = demo.data_config(tiny, max_length=20)
    c.data.caption = "short"
    c.data.with_regions = True
    c.data.caption_object_dropout = arg.drop
    c.data.complete_captions = arg.variant not in ("plain", "no_completion", "experts4")
    if arg.variant == "experts4":
        c.method = "experts"
        c.model.formulation = "ddpm"
        c.model.experts = ml_collections.ConfigDict(dict(partition="ernie", num_experts=4, mode="vmap",
                                                         step="unrolled"))
        c.model.train_text_encoder = True
        c.batch_size *= 4
        c.optim.warmup_steps = 10
    c.model.knowledge = ml_collections.ConfigDict(dict(
        enabled=arg.variant not in ("plain", "experts4"),
        key_tokens=arg.variant not in ("no_key",),
        key_weight=arg.key_weight, key_fraction=0.5, key_placement=arg.placement,
        regions="" if arg.variant == "no_region" else "masks",
        region_weight=arg.region_weight, region_fraction=0.5,
    ))
    return c
