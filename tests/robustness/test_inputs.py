"""Bad inputs stop with a message naming what is wrong, before compute is spent (issue 17, inputs)."""

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
