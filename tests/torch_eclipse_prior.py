"""PyTorch rendering of ECLIPSE's released prior (eclipse-t2i/eclipse-inference src/priors/prior_transformer.py
@58bc8f8): diffusers' PriorTransformer with the timestep embedding removed (additional_embeddings=3, sequence
[text tokens, pooled text, noise, prd]). Test-only reference for parity and for the benchmark."""

import torch
import torch.nn.functional as F
from diffusers.models.transformers.prior_transformer import PriorTransformer


class EclipsePriorTorch(PriorTransformer):
    def __init__(self, **kwargs):
        super().__init__(additional_embeddings=3, **kwargs)
        del self.time_proj, self.time_embedding  # the release has no time path (no keys in its state dict)

    def forward(self, hidden_states, proj_embedding, encoder_hidden_states, attention_mask=None):
        b = hidden_states.shape[0]
        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        tokens = [self.encoder_hidden_states_proj(encoder_hidden_states), self.embedding_proj(proj_embedding)[:, None],
                  self.proj_in(hidden_states)[:, None], self.prd_embedding.to(hidden_states.dtype).expand(b, -1, -1)]
        x = torch.cat(tokens, dim=1) + self.positional_embedding.to(hidden_states.dtype)
        if attention_mask is not None:
            mask = (1 - attention_mask.to(x.dtype)) * -10000.0
            mask = F.pad(mask, (0, self.additional_embeddings), value=0.0)
            mask = (mask[:, None, :] + self.causal_attention_mask).to(x.dtype)
            attention_mask = mask.repeat_interleave(self.config.num_attention_heads, dim=0)
        if self.norm_in is not None:
            x = self.norm_in(x)
        for block in self.transformer_blocks:
            x = block(x, attention_mask=attention_mask)
        return self.proj_to_clip_embeddings(self.norm_out(x)[:, -1])


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every parameter N(0, std^2) (zeros-initialised ones included, so that parity covers them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()
