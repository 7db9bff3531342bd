"""PyTorch rendering of the released SUR-adapter (Qrange-group/SUR-adapter `SUR_adapter.py` @ac26645, unchanged at
5d97aa3) and of `LLMResize` and `distillation_loss` from its `SUR_adapter_train.py`. Test-only reference for parity
(tests/test_sur_adapter.py) and for the benchmark (benchmarks/sur_adapter.py).

Differences from the release, none of which changes a released computation:
- `RefAdapter` takes nhead and dim_feedforward as arguments (released: 8 and 2048) so that a tiny config can be
  tested, and `forward(x, batch_first_fix=True)` runs the paper's intent (the encoder attends across the tokens of
  each sample) next to the released batch_first=False reading (default, quirk Q1).
- `ref_distillation_loss` leaves out the two softmaxes the released `distillation_loss` computes and never uses
  (`encoder_log_softmax`, `prompt_softmax`): same value and gradient.
"""

import torch
import torch.nn as tnn
import torch.nn.functional as F


class RefAttention(tnn.Module):
    def __init__(self, hidden_size=768):
        super().__init__()
        self.hidden_size = hidden_size
        self.query_layer = tnn.Linear(hidden_size, hidden_size)
        self.key_layer = tnn.Linear(hidden_size, hidden_size)
        self.value_layer = tnn.Linear(hidden_size, hidden_size)  # defined, never used (Q5)
        self.output_layer = tnn.Sequential(tnn.Linear(hidden_size, hidden_size), tnn.ReLU(),
                                           tnn.Linear(hidden_size, hidden_size))

    def forward(self, query, key, value):
        q, k = self.query_layer(query), self.key_layer(key)
        scores = torch.matmul(q, k.transpose(-2, -1)) / torch.sqrt(torch.tensor(self.hidden_size,
                                                                                dtype=torch.float32))
        weighted = torch.matmul(F.softmax(scores, dim=-1), value) + value
        return self.output_layer(weighted) + weighted


class RefAdapter(tnn.Module):
    def __init__(self, depth=2, adapter_weight=0.01, sd_text_size=768, nhead=8, dim_feedforward=2048):
        super().__init__()
        self.adapter_weight = adapter_weight
        # no batch_first (Q1); the template stays registered (Q5)
        self.encoder_layer = tnn.TransformerEncoderLayer(d_model=sd_text_size, nhead=nhead,
                                                         dim_feedforward=dim_feedforward)
        self.transformer_encoder = tnn.TransformerEncoder(self.encoder_layer, num_layers=depth)
        self.attention = RefAttention(hidden_size=sd_text_size)
        self.fc = tnn.Linear(sd_text_size, sd_text_size)
        tnn.init.zeros_(self.fc.weight)

    def forward(self, x, batch_first_fix=False):
        if batch_first_fix:  # the paper's intent: attend across the tokens of each sample
            enc = self.transformer_encoder(x.transpose(0, 1)).transpose(0, 1)
        else:  # as released: (B, L, D) is read as (seq=B, batch=L, D)
            enc = self.transformer_encoder(x)
        out_att = self.attention(query=enc, key=x, value=x)
        out_llm = self.fc(out_att)
        out = self.adapter_weight * out_llm + (1 - self.adapter_weight) * x
        return out, enc, out_llm


class LLMResize(tnn.Module):
    """The release's frozen random projection of the LLM vector (Q4): Linear(llm_size -> sd_text_size)."""

    def __init__(self, llm_size=6656, sd_text_size=768):
        super().__init__()
        self.fc = tnn.Linear(llm_size, sd_text_size)

    def forward(self, x):
        return self.fc(x)


def ref_distillation_loss(x, y, temperature=1.0):
    """The release's `distillation_loss` (SUR_adapter_train.py): y, the second argument, is the KL target and is
    not detached (Q6)."""
    kl = F.kl_div(F.log_softmax(x / temperature, dim=-1), F.softmax(y / temperature, dim=-1), reduction="batchmean")
    return kl * temperature * temperature
