import json
import logging

import pytest

from modules.config import (
    HParams,
    load_config,
    load_diffusion_config,
    load_template,
    save_config,
    save_diffusion_config,
)
from modules.errors import ConfigError


def write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_round_trip_is_identical(tmp_path):
    template = load_template()
    hps = load_config(write(tmp_path, template))
    assert hps.train.batch_size == 6
    assert hps["model"]["ssl_dim"] == 768
    assert hps.model.resblock_dilation_sizes == [[1, 3, 5]] * 3
    out = tmp_path / "out.json"
    save_config(hps, out)
    assert json.loads(out.read_text()) == template
    assert load_config(out) == hps


def test_tiny_template_differs_only_where_documented():
    full, tiny = load_template(), load_template(tiny=True)
    diff = {k for k in full["model"] if full["model"][k] != tiny["model"][k]}
    assert diff == {"filter_channels", "upsample_initial_channel", "use_depthwise_conv", "flow_share_parameter"}
    assert tiny["model"]["upsample_initial_channel"] == 400


def test_old_40_config_gets_41_defaults_with_warning(tmp_path, caplog):
    old = load_template()
    for key in ("speech_encoder", "vol_embedding", "use_automatic_f0_prediction", "vocoder_name"):
        del old["model"][key]
    del old["data"]["unit_interpolate_mode"]
    old["model"]["ssl_dim"] = 256
    with caplog.at_level(logging.WARNING):
        hps = load_config(write(tmp_path, old))
    assert hps.model.speech_encoder == "vec768l12"
    assert hps.model.vol_embedding is False
    assert hps.data.unit_interpolate_mode == "nearest"
    assert hps.model.ssl_dim == 256  # given values are kept
    assert "model.speech_encoder" in caplog.text


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("train", "batch_size", "six", "train.batch_size"),
        ("model", "vol_embedding", "yes", "model.vol_embedding"),
        ("model", "speech_encoder", "hubert-giant", "model.speech_encoder"),
        ("model", "vocoder_name", "wavenet", "model.vocoder_name"),
        ("model", "upsample_rates", [8, 8, 2, 2], "upsample_rates"),
        ("model", "n_speakers", 2, "n_speakers"),
    ],
)
def test_invalid_fields_name_the_field_and_file(tmp_path, section, key, value, message):
    cfg = load_template()
    cfg[section][key] = value
    path = write(tmp_path, cfg)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_diffusion_round_trip_and_validation(tmp_path):
    import yaml

    from modules.config import DIFFUSION_TEMPLATE

    hps = load_diffusion_config(DIFFUSION_TEMPLATE)
    assert hps.model.timesteps == 1000 and hps.infer.method == "dpm-solver++"
    out = tmp_path / "diffusion.yaml"
    save_diffusion_config(hps, out)
    assert load_diffusion_config(out) == hps
    data = yaml.safe_load(out.read_text())
    data["infer"]["method"] = "euler"
    out.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="infer.method"):
        load_diffusion_config(out)


def test_hparams_access():
    h = HParams(a={"b": 1}, c=[1, 2])
    assert h.a.b == 1 and h["a"]["b"] == 1 and "a" in h and h.get("zz", 3) == 3
    h.a.b = 5
    assert h.to_dict() == {"a": {"b": 5}, "c": [1, 2]}


def test_discriminator_width_defaults_quietly_and_is_checked(tmp_path, caplog):
    cfg = load_template()
    del cfg["model"]["discriminator_width"]  # a so-vits-svc 4.1 config has neither field
    del cfg["model"]["mask_unvoiced_f0"]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        loaded = load_config(tmp_path / "c.json")
    assert loaded.model.discriminator_width == 1.0 and loaded.model.mask_unvoiced_f0 is False
    assert "discriminator_width" not in caplog.text and "mask_unvoiced_f0" not in caplog.text
    cfg["model"]["discriminator_width"] = 0.3
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model.discriminator_width' is 0.3; expected one of 1.0, 0.5, 0.25"):
        load_config(tmp_path / "c.json")
