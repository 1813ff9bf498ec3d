import json

import pytest
import torch

from mrgen import nets


def test_save_load_roundtrip(tmp_path, make_cfg, spatial_dims, rand):
    cfg = make_cfg(spatial_dims)
    ae = rand(nets.build_autoencoder(cfg), seed=0)
    info = nets.save_model(tmp_path / "ae", "autoencoder", ae, {"step": 7, "scale_factor": 0.5})
    files = sorted(p.name for p in (tmp_path / "ae").iterdir())
    assert files == ["model.json", "model.safetensors"]  # no temp files left
    meta = json.loads((tmp_path / "ae" / "model.json").read_text())
    assert meta["schema"] == 1 and meta["kind"] == "autoencoder" and meta["step"] == 7
    assert meta["sha256"] == nets.sha256_file(tmp_path / "ae" / "model.safetensors") == info["sha256"]
    fresh = nets.build_autoencoder(cfg)
    got = nets.load_model(tmp_path / "ae", fresh, kind="autoencoder")
    assert got["scale_factor"] == 0.5
    for (k, a), (_, b) in zip(ae.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_mismatch_is_clear(tmp_path, make_cfg):
    cfg = make_cfg(2)
    nets.save_model(tmp_path / "ldm", "ldm", nets.build_unet(cfg, 16), {})
    wrong = nets.build_unet(cfg, 24)  # other context dim -> cross-attention shapes differ
    with pytest.raises(nets.ModelLoadError, match="shape mismatch.*attn2"):
        nets.load_model(tmp_path / "ldm", wrong)
    deeper = nets.build_unet(make_cfg(2, "ldm.num_res_blocks=2"), 16)
    with pytest.raises(nets.ModelLoadError, match="missing from the file"):
        nets.load_model(tmp_path / "ldm", deeper)
    with pytest.raises(nets.ModelLoadError, match="expected 'controller'"):
        nets.load_model(tmp_path / "ldm", nets.build_unet(cfg, 16), kind="controller")
    with pytest.raises(nets.ModelLoadError, match="not found"):
        nets.load_model(tmp_path / "nothing", wrong)


def test_load_detects_corruption(tmp_path, make_cfg):
    cfg = make_cfg(2)
    nets.save_model(tmp_path / "m", "ldm", nets.build_unet(cfg, 16), {})
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(nets.ModelLoadError, match="sha256"):
        nets.load_model(tmp_path / "m", nets.build_unet(cfg, 16))
