"""Weight files are checked on load (issue 17, corruption and safety): a safetensors file cut short, or holding a
NaN, is refused naming the file (and tensor); pickled checkpoints are never unpickled."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from t2ijax.models.sur_adapter import SURAdapter
from t2ijax.weights import load_sur_adapter, save_sur_adapter
from t2ijax.weights.torch_layout import WeightLoadError


@pytest.fixture()
def adapter_file(tmp_path):
    module = SURAdapter(width=8, depth=1, heads=2, ff_dim=16)
    params = module.init(jax.random.PRNGKey(0), np.zeros((1, 4, 8), np.float32))["params"]
    path = save_sur_adapter(module, nn.meta.unbox(params), str(tmp_path / "adapter.safetensors"))
    load_sur_adapter(path)  # intact: loads
    return path


def test_a_file_cut_short_is_refused_naming_it(adapter_file):
    with open(adapter_file, "r+b") as f:
        f.truncate(os.path.getsize(adapter_file) - 100)
    with pytest.raises(WeightLoadError, match=r"adapter\.safetensors is not a readable safetensors file \(cut short"):
        load_sur_adapter(adapter_file)


def test_a_nan_in_a_tensor_is_refused_naming_it(adapter_file):
    sd = load_file(adapter_file)
    sd["fc.bias"][3] = np.nan
    save_file(sd, adapter_file)
    with pytest.raises(WeightLoadError, match=r"tensor 'fc.bias' \(8,\) holds 1 non-finite values"):
        load_sur_adapter(adapter_file)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_pickled_files_are_refused_with_the_conversion_hint_and_never_opened(tmp_path, suffix):
    path = tmp_path / f"adapter{suffix}"
    path.write_bytes(b"\x80\x04 this would be a pickle")
    with pytest.raises(Exception, match=r"(?i)pickle|convert"):
        load_sur_adapter(str(path))


def test_a_tensor_of_the_wrong_kind_is_refused_naming_it(adapter_file):
    sd = load_file(adapter_file)
    sd["fc.bias"] = sd["fc.bias"].astype(np.int32)  # e.g. a tampered or mis-converted file: never cast silently
    save_file(sd, adapter_file)
    with pytest.raises(WeightLoadError, match=r"dtype of fc.bias: checkpoint has int32, the model's parameter is "
                                              r"float32"):
        load_sur_adapter(adapter_file)
    import ml_dtypes

    for half in (np.float16, ml_dtypes.bfloat16):  # another float width is a cast, as upstream half files need
        sd["fc.bias"] = sd["fc.bias"].astype(half)
        save_file(sd, adapter_file)
        load_sur_adapter(adapter_file)
