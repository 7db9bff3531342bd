"""ECLIPSE prior for the Karlo decoder (arXiv 2312.04655): 33.1M params, CLIP ViT-L/14 width 768.

The recipe, arguments and choices are those of configs/eclipse_kandinsky22.py (trained on CC12M for the release).

Launch:
  t2ijax train --config=configs/eclipse_karlo.py:features=/data/cc12m_vitl14.array_record \\
      --workdir=/shared/runs/eclipse_karlo --config.mesh.fsdp=4
  t2ijax train --config=configs/eclipse_karlo.py:prior=diffusion,features=/data/cc12m_vitl14.array_record \\
      --workdir=/shared/runs/karlo_diffusion_prior
  t2ijax convert --workdir=/shared/runs/eclipse_karlo --out=/shared/export/eclipse_karlo
  t2ijax train --config=configs/eclipse_karlo.py:tiny --config.data.path=runs/features/train.array_record \\
      --workdir=runs/eclipse_karlo_tiny
"""

from t2ijax.config_utils import import_sibling

kandinsky22 = import_sibling(__file__, "eclipse_kandinsky22")


def get_config(arg=None):
    return kandinsky22.paper_config(arg, embedding_dim=768, name="eclipse_karlo")
