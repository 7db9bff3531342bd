"""Load and export upstream checkpoint layouts (diffusers, Hugging Face, the papers' releases).

Public API (imported lazily so that `import t2ijax.weights` stays cheap):
  load_unet(path) -> (module, params)          diffusers UNet2DConditionModel folder
  load_vae(path) -> (module, params)           diffusers AutoencoderKL folder
  load_movq(path) -> (module, params)          diffusers VQModel folder (Kandinsky 2.2's MoVQ)
  save_unet / save_vae / save_movq(module, params, path)   export back to the diffusers layout
  load_text_encoder(path) -> (module, params)  T5 / mT5 / UMT5 encoder, CLIP text, Llama (from config.json)
  load_clip(path) -> (module, params)          full CLIP (text + vision towers, projections)
  load_ella(path, **overrides) -> (module, params)  ELLA's released TSC safetensors
  load_eclipse_prior(path) -> (module, params) ECLIPSE's released prior folder (diffusers PriorTransformer)
  save_eclipse_prior(module, params, path)     export to that layout
  load_sur_adapter(path, reproduce_release=False, **overrides) -> (module, params)  SUR-adapter state dict
  save_sur_adapter(module, params, path)       export to the released Adapter layout (+ eta/switch sidecar)
  load_llm_projection(path)                    the fixed LLMResize projection saved beside an adapter
"""

import importlib

_API = {
    "load_unet": "diffusers", "load_vae": "diffusers", "save_unet": "diffusers", "save_vae": "diffusers",
    "load_movq": "diffusers", "save_movq": "diffusers",
    "load_text_encoder": "hf", "load_clip": "hf", "save_text_encoder": "hf", "load_tokenizer": "hf",
    "load_ella": "ella", "save_ella": "ella",
    "load_eclipse_prior": "eclipse", "save_eclipse_prior": "eclipse",
    "load_sur_adapter": "sur_adapter", "save_sur_adapter": "sur_adapter",
    "load_llm_projection": "sur_adapter",
}


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
