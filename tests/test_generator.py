"""NAYER's generator: the K-to-1 noisy layer, the decoder's output shapes, training signal, rounds."""

from __future__ import annotations

import pytest
import torch

from nayer_edge.synthesis.generator import Decoder, NayerGenerator, NoiseGenerator, NoisyLayer, round_targets

K = 10  # classes
EMBED_DIM = 12


def label_embeddings(num_classes: int = K, dim: int = EMBED_DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))


def small_generator(out_shape=(1, 16, 16), batch_size: int = 20, seed: int = 0) -> NayerGenerator:
    torch.manual_seed(seed)
    return NayerGenerator(label_embeddings(), out_shape, batch_size, noisy_dim=32, ngf=8)


# --- NoisyLayer ---------------------------------------------------------------------------------------


def test_reinitialize_redraws_standard_normal_weights_and_zero_bias():
    torch.manual_seed(0)
    layer = NoisyLayer(384, 1000, num_blocks=2, block_size=K)
    with torch.no_grad():  # make the biases non-zero so that zeroing them is observable
        for linear in layer.linears:
            linear.bias.fill_(0.3)
    before = [linear.weight.detach().clone() for linear in layer.linears]

    layer.reinitialize()

    for old, linear in zip(before, layer.linears):
        w = linear.weight.detach()
        assert w.shape == (1000, 384)
        assert not torch.equal(old, w)
        # 384 000 draws: the standard error of the mean is ~0.0016
        assert abs(w.mean().item()) < 0.01
        assert abs(w.std().item() - 1.0) < 0.01
        assert torch.count_nonzero(linear.bias) == 0
    # each block gets its own draw, not a shared one
    assert not torch.equal(layer.linears[0].weight, layer.linears[1].weight)


def test_noisy_layer_applies_linear_i_to_block_i():
    torch.manual_seed(1)
    layer = NoisyLayer(6, 5, num_blocks=3, block_size=4)
    x = torch.randn(12, 6)
    out = layer(x)
    assert out.shape == (12, 5)
    for i, linear in enumerate(layer.linears):
        rows = slice(i * 4, (i + 1) * 4)
        expected = x[rows] @ linear.weight.T + linear.bias
        torch.testing.assert_close(out[rows], expected)


@pytest.mark.parametrize("block", [0, 1, 2])
def test_perturbing_linear_i_changes_only_block_i(block):
    torch.manual_seed(2)
    layer = NoisyLayer(6, 5, num_blocks=3, block_size=4)
    x = torch.randn(12, 6)
    before = layer(x).detach()
    with torch.no_grad():
        layer.linears[block].weight.add_(0.5)
    after = layer(x).detach()

    changed = (before != after).any(dim=1)
    expected = torch.zeros(12, dtype=torch.bool)
    expected[block * 4:(block + 1) * 4] = True
    assert torch.equal(changed, expected)


def test_perturbing_noisy_block_changes_only_that_blocks_images_in_eval_mode():
    # In training mode the decoder's BatchNorm mixes the batch; with running statistics it does not.
    gen = small_generator(batch_size=30).eval()
    targets = round_targets(K, 30)
    before = gen(targets).detach()
    with torch.no_grad():
        gen.noisy.linears[1].weight.mul_(-1)
    after = gen(targets).detach()

    changed = (before != after).flatten(1).any(dim=1)
    expected = torch.zeros(30, dtype=torch.bool)
    expected[K:2 * K] = True
    assert torch.equal(changed, expected)


def test_noisy_layer_rejects_a_batch_larger_than_its_blocks():
    layer = NoisyLayer(6, 5, num_blocks=2, block_size=4)
    layer(torch.randn(8, 6))  # exactly 2 blocks is fine
    with pytest.raises(ValueError, match="noisy blocks"):
        layer(torch.randn(9, 6))


# --- NayerGenerator -----------------------------------------------------------------------------------


@pytest.mark.parametrize("out_shape", [(1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 18, 18)])
def test_generator_output_shape_and_range(out_shape):
    gen = small_generator(out_shape, batch_size=20)
    images = gen(round_targets(K, 20))
    assert images.shape == (20, *out_shape)
    assert images.dtype == torch.float32
    assert images.min().item() >= 0.0 and images.max().item() <= 1.0
    assert images.std().item() > 0  # not a constant image


def test_generator_batch_not_a_multiple_of_num_classes():
    gen = small_generator((1, 16, 16), batch_size=25)
    assert len(gen.noisy.linears) == 3  # ceil(25 / 10)
    images = gen(round_targets(K, 25))
    assert images.shape == (25, 1, 16, 16)
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0


def test_decoder_crops_sizes_not_divisible_by_four():
    torch.manual_seed(0)
    decoder = Decoder(7, (3, 18, 18), ngf=4)
    assert (decoder.init_h, decoder.init_w) == (5, 5)  # 5·4 = 20 ≥ 18
    assert decoder(torch.randn(3, 7)).shape == (3, 3, 18, 18)
    decoder = Decoder(7, (1, 13, 10), ngf=4)
    assert decoder(torch.randn(2, 7)).shape == (2, 1, 13, 10)


def test_decoder_upsamplings_set_the_start_size_and_keep_the_papers_layers_at_two():
    torch.manual_seed(0)
    paper = Decoder(7, (3, 64, 64), ngf=4)
    assert (paper.init_h, paper.init_w) == (16, 16)
    assert [type(m).__name__ for m in paper.blocks] == [
        "BatchNorm2d", "Upsample", "Conv2d", "BatchNorm2d", "LeakyReLU", "Upsample", "Conv2d", "BatchNorm2d",
        "LeakyReLU", "Conv2d"]
    deeper = Decoder(7, (3, 64, 64), ngf=4, upsamplings=3)
    assert (deeper.init_h, deeper.init_w) == (8, 8)
    assert sum(isinstance(m, torch.nn.Upsample) for m in deeper.blocks) == 3
    assert deeper.project.out_features == 2 * 4 * 8 * 8
    assert deeper(torch.randn(2, 7)).shape == (2, 3, 64, 64)
    assert Decoder(7, (1, 28, 28), ngf=4, upsamplings=3)(torch.randn(2, 7)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="at least one upsampling"):
        Decoder(7, (3, 32, 32), upsamplings=0)


def test_a_tapered_decoder_halves_its_channels_at_every_stage():
    torch.manual_seed(0)
    tapered = Decoder(7, (3, 64, 64), ngf=4, upsamplings=3, taper=True)
    convs = [m for m in tapered.blocks if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 16), (16, 8), (8, 4), (4, 3)]
    assert tapered.project.out_features == 32 * 8 * 8
    assert tapered(torch.randn(2, 7)).shape == (2, 3, 64, 64)
    # Without taper the same call is the paper's layout: 2·ngf until the last stage.
    paper = Decoder(7, (3, 64, 64), ngf=4, upsamplings=3)
    assert [(c.in_channels, c.out_channels) for c in paper.blocks if isinstance(c, torch.nn.Conv2d)] == [
        (8, 8), (8, 8), (8, 4), (4, 3)]


def test_gradients_reach_decoder_noisy_layer_and_embedding_norm():
    gen = small_generator(batch_size=20)
    targets = round_targets(K, 20)
    loss = (gen(targets) - 0.3).pow(2).mean()
    loss.backward()
    for name in ("decoder.project.weight", "decoder.blocks.2.weight", "decoder.blocks.9.weight",
                 "noisy.linears.0.weight", "noisy.linears.1.weight", "embedding_norm.weight"):
        grad = dict(gen.named_parameters())[name].grad
        assert grad is not None, name
        assert grad.abs().sum().item() > 0, name


def test_label_embeddings_are_a_buffer_not_a_parameter():
    embeddings = label_embeddings()
    gen = NayerGenerator(embeddings, (1, 16, 16), 20, noisy_dim=32, ngf=8)
    names = {name for name, _ in gen.named_parameters()}
    assert "label_embeddings" not in names
    assert all(p is not gen.label_embeddings for p in gen.parameters())
    assert "label_embeddings" in dict(gen.named_buffers())
    assert "label_embeddings" in gen.state_dict()  # saved with the generator
    assert not gen.label_embeddings.requires_grad
    torch.testing.assert_close(gen.label_embeddings, embeddings)

    # one optimiser step over all parameters leaves the embeddings untouched
    optimizer = torch.optim.SGD(gen.parameters(), lr=0.1)
    gen(round_targets(K, 20)).mean().backward()
    optimizer.step()
    torch.testing.assert_close(gen.label_embeddings, embeddings, rtol=0, atol=0)
    # and the buffer is a copy, not a view of the caller's tensor
    embeddings.add_(1.0)
    assert not torch.equal(gen.label_embeddings, embeddings)


def test_new_round_changes_images_for_the_same_targets_but_not_the_decoder():
    gen = small_generator(batch_size=20).eval()
    targets = round_targets(K, 20)
    decoder_state = {k: v.clone() for k, v in gen.decoder.state_dict().items()}
    before = gen(targets).detach()

    gen.new_round()

    after = gen(targets).detach()
    assert (before - after).abs().mean().item() > 1e-3
    for key, value in gen.decoder.state_dict().items():
        assert torch.equal(value, decoder_state[key]), key


def test_generator_is_deterministic_given_the_seed():
    a = small_generator(seed=5)
    b = small_generator(seed=5)
    targets = round_targets(K, 20)
    torch.testing.assert_close(a(targets), b(targets), rtol=0, atol=0)


# --- NoiseGenerator -----------------------------------------------------------------------------------


def test_noise_generator_new_round_redraws_z():
    torch.manual_seed(0)
    gen = NoiseGenerator((1, 16, 16), batch_size=20, z_dim=16, ngf=8)
    z = gen.z.detach().clone()
    gen.new_round()
    assert gen.z.shape == (20, 16)
    assert not torch.equal(z, gen.z)
    assert abs(gen.z.mean().item()) < 0.3 and abs(gen.z.std().item() - 1.0) < 0.2
    assert gen.z.requires_grad  # z is optimised together with the decoder


def test_noise_generator_output_and_gradient_to_z():
    torch.manual_seed(0)
    gen = NoiseGenerator((3, 18, 18), batch_size=20, z_dim=16, ngf=8)
    images = gen(round_targets(K, 20))
    assert images.shape == (20, 3, 18, 18)
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0
    images.mean().backward()
    assert gen.z.grad is not None and gen.z.grad.abs().sum().item() > 0


# --- round_targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [10, 20, 25, 7])
def test_round_targets_hold_one_sample_per_class_per_block(batch_size):
    targets = round_targets(K, batch_size)
    assert targets.shape == (batch_size,)
    assert targets.dtype == torch.int64
    for start in range(0, batch_size, K):
        block = targets[start:start + K]
        assert torch.equal(block, torch.arange(len(block)))  # distinct classes, in order
    counts = torch.bincount(targets, minlength=K)
    assert counts.max() - counts.min() <= 1
