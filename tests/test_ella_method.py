"""ELLA method end to end at the tiny config: the real train loop, checkpoint, sampling, feature cache."""

import os

import jax
import numpy as np
import pytest

from t2ijax.config_utils import load_module

CONFIG_FILE = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "ella_sd15.py")


def tiny_config(tmp_dir, llm_type="t5", feature_cache=True):
    """configs/ella_sd15.py:tiny, in pixel space (no VAE: one compiled model fewer) for test speed."""
    c = load_module(CONFIG_FILE).get_config(f"variant=tiny,llm_type={llm_type}")
    c.data.data_dir = os.path.join(tmp_dir, "datasets")
    c.model.vae = {}
    c.model.unet.update(in_channels=3, out_channels=3, sample_size=16)
    c.total_steps = 2
    c.log_every = 1
    c.checkpoint_every = 2
    c.async_checkpointing = False
    c.tensorboard = False
    c.progress = False
    c.model.feature_cache = os.path.join(tmp_dir, "cache", "t5_train.array_record") if feature_cache else ""
    c.model.feature_cache_dtype = "float32"
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from t2ijax.methods import get_method
    from t2ijax.train.loop import train

    tmp = str(tmp_path_factory.mktemp("ella"))
    config = tiny_config(tmp)
    method = get_method("ella", config)
    cache_path = method.prepare(config)  # what `t2ijax prepare` runs
    workdir = os.path.join(tmp, "run")
    state = train(config, workdir)
    return config, method, cache_path, workdir, state


def test_trains_only_the_tsc_through_the_loop(trained):
    from t2ijax.train.checkpoint import Checkpointer

    config, method, _, workdir, state = trained
    assert int(state.step) == 2
    assert set(state.params) == {"time_embedding", "connector"}, set(state.params)
    n_trainable = sum(x.size for x in jax.tree.leaves(state.params))
    n_tsc = sum(x.size for x in jax.tree.leaves(method.init(jax.random.PRNGKey(0), config)))
    assert n_trainable == n_tsc
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), trainable_item="connector")
    assert ckpt.latest_step() == 2
    items = ckpt.saved_items(2)
    assert "connector" in items and not {"params", "unet", "text_encoder", "vae"} & items, items
    ckpt.close()
    losses = [line for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]
    assert len(losses) == 2


def test_samples_from_the_checkpoint(trained):
    from t2ijax.train.sampling import load_for_inference

    config, _, _, workdir, _ = trained
    method, params, frozen, _ = load_for_inference(config, workdir)
    images = method.sample(params, frozen, ["a red circle", "two blue squares"], seeds=[0, 1], num_steps=2)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 0


def test_feature_cache_gives_the_on_the_fly_loss(trained):
    from t2ijax.train.loop import make_loader

    config, method, cache_path, _, state = trained
    loader = method.wrap_loader(make_loader(config, split="train", batch_size=4, seed=3), "train")
    batch = next(loader)
    assert batch["text_features"].shape == (4, config.data.max_length, method.text_width)
    frozen = method.frozen(config)
    rng = jax.random.PRNGKey(7)
    with_cache, _ = method.loss(state.params, frozen, batch, rng)
    on_the_fly = {k: v for k, v in batch.items() if k != "text_features"}
    direct, _ = method.loss(state.params, frozen, on_the_fly, rng)
    diff = abs(float(with_cache) - float(direct))
    print(f"cached-feature loss {float(with_cache):.7f} vs on-the-fly {float(direct):.7f}: |diff| = {diff:.2e}")
    assert diff <= 1e-5 * abs(float(direct))
    assert os.path.exists(cache_path + ".json")


def test_feature_cache_errors(trained, tmp_path):
    from t2ijax.methods.ella import ELLAMethod
    from t2ijax.train.loop import make_loader

    config, _, cache_path, _, _ = trained
    missing = tiny_config(str(tmp_path))
    missing.data.data_dir = config.data.data_dir
    method = ELLAMethod(missing)
    loader = make_loader(missing, split="train", batch_size=4, seed=0)
    with pytest.raises(FileNotFoundError, match="t2ijax prepare"):
        method.wrap_loader(loader, "train")
    longer = tiny_config(str(tmp_path))
    longer.data.data_dir = config.data.data_dir
    longer.data.max_length = 24
    longer.model.feature_cache = cache_path
    with pytest.raises(ValueError, match="data.max_length"):
        ELLAMethod(longer).wrap_loader(loader, "train")


def test_llama_backend_and_bad_configs(tmp_path):
    from t2ijax.methods.ella import ELLAMethod

    config = tiny_config(str(tmp_path), llm_type="llama", feature_cache=False)
    method = ELLAMethod(config)
    assert type(method.text_encoder).__name__ == "LlamaModel" and method.text_width == 48
    ids = np.ones((2, config.data.max_length), np.int32)
    from t2ijax.methods.ella import random_frozen_params
    params = random_frozen_params(method.text_encoder, np.random.default_rng(0), ids, ids)
    feats = method.encode_text(params, ids, ids)
    assert feats.shape == (2, config.data.max_length, 48)

    bad = tiny_config(str(tmp_path), feature_cache=False)
    bad.model.ella.input_dim = 64
    with pytest.raises(ValueError, match="LLM width 48"):
        ELLAMethod(bad)
    bad = tiny_config(str(tmp_path), feature_cache=False)
    bad.model.text_encoder_type = "bert"
    with pytest.raises(ValueError, match="text_encoder_type"):
        ELLAMethod(bad)


def test_ella_shapes_config_takes_a_trained_llm_folder_and_the_mlp_connector(tmp_path):
    """configs/ella_shapes.py: llm=<folder> sets the frozen LLM and the connector's input width from its config.json;
    variant mlp is the per-token MLP connector (experiments/ella_llms)."""
    import json

    from t2ijax.config_utils import load_config

    for model_type, key in (("llama", "hidden_size"), ("t5", "d_model")):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, key: 96}))
        c = load_config(f"configs/ella_shapes.py:variant=mlp,llm={folder}")
        assert (c.model.text_encoder_path, c.model.text_encoder_type, c.model.ella.input_dim,
                c.model.ella.connector_type) == (str(folder), model_type, 96, "mlp")
        assert "text" not in c.model
    default = load_config("configs/ella_shapes.py:tsc")
    assert default.model.text_encoder_path == "" and default.model.ella.input_dim == 64
    with pytest.raises(ValueError, match="applies to the stage-2 variants"):
        load_config(f"configs/ella_shapes.py:variant=unet,llm={tmp_path / 'llama'}")
