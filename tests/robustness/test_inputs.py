"""Bad inputs stop with a message naming what is wrong, before compute is spent (issue 17, inputs)."""

import os
import warnings

import pytest

from t2ijax.config_utils import load_config

HUB_ID = "runwayml/stable-diffusion-v1-5"
HINT = r"is not a local folder\. t2ijax never downloads models: .*huggingface-cli download"


@pytest.mark.parametrize("loader", ["load_unet", "load_vae", "load_text_encoder", "load_tokenizer"])
def test_a_hub_id_where_a_folder_is_required_says_how_to_provide_it(loader):
    import t2ijax.weights as weights

    with pytest.raises(FileNotFoundError, match=HINT):
        getattr(weights, loader)(HUB_ID)


def test_a_method_config_with_a_hub_id_fails_at_construction():
    from t2ijax.methods.sur import SURMethod

    config = load_config("configs/sur_shapes.py:tiny")
    config.model.unet_path = HUB_ID
    with pytest.raises(FileNotFoundError, match=HINT):
        SURMethod(config)


VILG300 = [("A red colored car.", "一辆红色的汽车。"), ("A black colored dog.", "一只黑色的狗。")]  # ViLG-300 rows 1, 4


def test_prompts_empty_too_long_and_foreign(recwarn):
    from t2ijax.data.tokenizer import check_prompts, load_tokenizer

    tok = load_tokenizer("shapes_word", 20)
    for empty in ("", "   ", None):
        with pytest.raises(ValueError, match=r"prompt 1 is empty"):
            check_prompts(tok, ["a red circle", empty], 20)
    long = " ".join(["a red circle left of a blue square"] * 4)  # 32 words + BOS / EOS
    notes = check_prompts(tok, ["a red circle", long], 20)
    assert notes == ["prompt 1 has 34 tokens, the text encoder reads 20: its last 14 tokens are dropped"]
    notes = check_prompts(tok, [zh for _, zh in VILG300], 20)
    assert len(notes) == 2 and all("unknown to the tokenizer" in n and "Chinese" in n for n in notes)
    assert check_prompts(tok, ["a red circle"], 20) == []


def test_sampling_warns_before_compute_and_the_cli_refuses_an_empty_prompt(tmp_path):
    import subprocess
    import sys
    import warnings

    from t2ijax.methods.txt2img import Txt2ImgMethod

    cli = subprocess.run([sys.executable, "-m", "t2ijax", "sample", "--config=configs/demo_shapes.py:tiny",
                          "--random_init", "--prompt=a red circle", "--prompt=  ", f"--out={tmp_path / 'x.png'}"],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and "prompt 1 is empty" in cli.stderr + cli.stdout, cli.stderr[-2000:]
    assert not os.path.exists(tmp_path / "x.png")
    method = Txt2ImgMethod(load_config("configs/demo_shapes.py:tiny"))
    method.tokens(["", "a red circle"])  # the unconditional input stays valid for methods (the demo compares it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.tokens([VILG300[0][1]])
    assert any("unknown to the tokenizer" in str(w.message) for w in caught)


def test_config_errors_before_any_model_is_built(tmp_path):
    from t2ijax.methods.sur import SURMethod
    from t2ijax.methods.txt2img import Txt2ImgMethod
    from t2ijax.train import loop

    demo = load_config("configs/demo_shapes.py")
    demo.data.resolution = 30
    with pytest.raises(ValueError, match=r"data.resolution 30 is not a multiple of the U-Net's downsampling factor 4"):
        Txt2ImgMethod(demo)
    sur = load_config("configs/sur_sd15.py:tiny")
    sur.data.resolution = 18
    with pytest.raises(ValueError, match=r"latent size \(data.resolution 18 / VAE factor 2\) 9 is not a multiple of "
                                         r"the U-Net's downsampling factor 2"):
        SURMethod(sur)
    folder = load_config("configs/sur_sd15.py:tiny")
    folder.data.name, folder.data.folder = "image_text_folder", str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"config.data.folder=.*missing' is not a folder"):
        loop.setup(folder)


def test_text_longer_than_a_loaded_clip_reads_is_refused(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2ijax.methods.sur import SURMethod

    CLIPTextModel(CLIPTextConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=20)).save_pretrained(
        tmp_path / "clip", safe_serialization=True)
    config = load_config("configs/sur_shapes.py:tiny")
    config.model.text_encoder_path = str(tmp_path / "clip")  # data.max_length is 80
    with pytest.raises(ValueError, match=r"data.max_length 80 exceeds the SUR CLIP text encoder's 20 positions"):
        SURMethod(config)


def test_a_mesh_larger_than_the_machine_is_refused_at_start_up(tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
    import common

    from t2ijax.train import loop

    config = common.toy_config(total_steps=2, progress=False, tensorboard=False)
    config.mesh.data = 64
    with pytest.raises(ValueError, match=r"config.mesh=.*needs 64 devices, but \d+ are available"):
        loop.train(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_text_past_a_loaded_llama_or_t5_trained_length_warns(tmp_path):
    """Llama (rotary) and T5 (relative) positions compute at any length, so longer text is a warning naming the
    limit, not an error as with CLIP's learned positions."""
    import jax.numpy as jnp
    from transformers import LlamaConfig, LlamaModel, T5Config, T5EncoderModel

    from t2ijax.methods.common import frozen_text_encoder

    LlamaModel(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=24)).save_pretrained(
        tmp_path / "llama", safe_serialization=True)
    T5EncoderModel(T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            n_positions=24)).save_pretrained(tmp_path / "t5", safe_serialization=True)
    for kind in ("llama", "t5"):
        with pytest.warns(UserWarning, match=r"data.max_length 80 exceeds the LLM's 24 positions .*trained on"):
            frozen_text_encoder(str(tmp_path / kind), None, kind, jnp.float32, vocab_size=99, max_length=80,
                                what="LLM")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # within the limit: silent
            frozen_text_encoder(str(tmp_path / kind), None, kind, jnp.float32, vocab_size=99, max_length=24,
                                what="LLM")


def test_a_global_batch_that_does_not_split_over_the_mesh_or_the_processes_is_refused(tmp_path, monkeypatch):
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    code = ("import sys; sys.path.insert(0, 'configs'); import common\n"
            "from t2ijax.train import loop\n"
            "config = common.toy_config(total_steps=2, batch_size=6, progress=False, tensorboard=False)\n"
            "config.mesh.data = 4\n"
            f"loop.train(config, {str(tmp_path / 'run')!r})\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert proc.returncode != 0
    assert "config.batch_size=6 is not divisible by the batch mesh axes ('data', 'fsdp') of size 4" in proc.stderr, \
        proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")

    sys.path.insert(0, os.path.join(root, "configs"))
    import common

    from t2ijax.train import loop

    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match=r"config.batch_size=7 must divide evenly over 2 processes"):
        loop.validate(common.toy_config(batch_size=7))


def test_bilingual_prompts_pass_through_a_byte_level_tokenizer_whole(tmp_path):
    """ViLG-300's Chinese rows: a tokenizer that covers them (byte-level BPE, as multilingual LLMs use; built here
    in the Hugging Face folder format) reads them without a note, and its ids decode back to the prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from t2ijax.data.tokenizer import check_prompts, load_tokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([t for row in VILG300 for t in row] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>").save_pretrained(
        tmp_path / "tok")
    tok = load_tokenizer(str(tmp_path / "tok"), 64)
    prompts = [p for row in VILG300 for p in row] + ["Ein rotes Auto, très rapide — ñ"]  # unseen letters too
    assert check_prompts(tok, prompts, 64) == []
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        assert ids and tok.decode(ids) == prompt
