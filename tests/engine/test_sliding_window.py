"""Sliding window: MONAI parity (gaussian), InnerEye parity (average: radio's patch grid), whole-volume equivalence,
batching, padding, fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference as monai_sliding_window

from innereye_batch.engine import sliding_window
from innereye_batch.engine.sliding_window import (
    StitchingMode,
    gaussian_importance_map,
    patch_starts,
    sliding_window_inference,
    strided_extent,
)
from tests.engine.conftest import conv_net


def _monai_posteriors(
    net: torch.nn.Module,
    image: torch.Tensor,
    patch: tuple[int, int, int],
    overlap: float | tuple[float, ...],
    mode: str,
) -> torch.Tensor:
    with torch.no_grad():
        out = monai_sliding_window(
            image[None],
            roi_size=patch,
            sw_batch_size=3,
            predictor=lambda x: torch.softmax(net(x), dim=1),
            overlap=overlap,
            mode=mode,
        )
    assert isinstance(out, torch.Tensor)
    return out[0]


def _innereye_outputs(
    net: torch.nn.Module, image: torch.Tensor, patch: tuple[int, int, int], stride: tuple[int, int, int], softmax: bool
) -> torch.Tensor:
    """InnerEye's inference, written from its radio library: edge-pad each axis by the stride's overshoot
    (``calc_padding_size``: half before), cut patches at k * stride (``get_patches``), average overlaps uniformly
    (``load_from_patches``), crop the padding."""
    array = image.numpy()
    shape = np.array(array.shape[1:])
    overshoot = (shape - np.array(patch) + np.array(stride)) % np.array(stride)
    delta = np.where(overshoot == 0, 0, np.array(stride) - overshoot)
    pads = [(int(d) // 2, int(d) - int(d) // 2) for d in delta]
    padded = np.pad(array, [(0, 0), *pads], mode="edge")
    sections = (np.array(padded.shape[1:]) - np.array(patch)) // np.array(stride) + 1
    total: np.ndarray | None = None
    count = np.zeros(padded.shape[1:])
    for corner in np.ndindex(*sections):
        window = tuple(slice(k * t, k * t + p) for k, t, p in zip(corner, stride, patch, strict=True))
        with torch.no_grad():
            output = net(torch.from_numpy(padded[(slice(None), *window)][None].copy()))
            output = (torch.softmax(output, dim=1) if softmax else output)[0].double().numpy()
        if total is None:
            total = np.zeros((output.shape[0], *padded.shape[1:]))
        total[(slice(None), *window)] += output
        count[window] += 1
    assert total is not None
    crop = tuple(slice(b, b + n) for (b, _), n in zip(pads, shape, strict=True))
    return torch.from_numpy(total / count)[(slice(None), *crop)].float()


@pytest.mark.parametrize(
    ("patch", "stride", "overlap"),
    [((8, 8, 8), (4, 4, 4), 0.5), ((8, 6, 10), (6, 4, 7), (0.25, 0.25, 0.25))],
)
def test_gaussian_matches_monai(
    image: torch.Tensor,
    patch: tuple[int, int, int],
    stride: tuple[int, int, int],
    overlap: float | tuple[float, ...],
) -> None:
    # a 3x3x3 net sees patch borders differently in every patch, so the stitching weights really matter
    net = conv_net(2, 3, seed=1)
    ours: StitchingMode = "gaussian"
    expected = _monai_posteriors(net, image, patch, overlap, "gaussian")
    result = sliding_window_inference(
        net,
        image,
        num_outputs=3,
        activation="softmax",
        patch_size=patch,
        stride=stride,
        stitching=ours,
        patch_batch=2,
    )
    assert result.shape == (3, 20, 18, 22)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    # and the stitching is not trivially the same in both modes
    other = sliding_window_inference(
        net,
        image,
        num_outputs=3,
        activation="softmax",
        patch_size=patch,
        stride=stride,
        stitching="average" if ours == "gaussian" else "gaussian",
    )
    assert float((other - result).abs().max()) > 1e-4


@pytest.mark.parametrize(
    ("shape", "patch", "stride"),
    [
        ((20, 18, 22), (8, 8, 8), (4, 4, 4)),  # y and x: 2 voxels past whole strides
        ((20, 18, 22), (8, 6, 10), (6, 4, 7)),
        ((27, 32, 35), (16, 16, 16), (8, 8, 8)),
        ((16, 24, 32), (8, 8, 8), (4, 8, 8)),  # whole strides already: no padding
    ],
)
def test_average_is_innereyes_patch_grid(
    shape: tuple[int, int, int], patch: tuple[int, int, int], stride: tuple[int, int, int]
) -> None:
    """ "average" reproduces InnerEye's own inference (its radio patch grid), posteriors and raw logits alike."""
    image = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    net = conv_net(2, 3, seed=1)
    for softmax in (False, True):  # logits, then posteriors (compared with MONAI below)
        expected = _innereye_outputs(net, image, patch, stride, softmax)
        result = sliding_window_inference(
            net,
            image,
            num_outputs=3,
            activation="softmax" if softmax else None,
            patch_size=patch,
            stride=stride,
            stitching="average",
            patch_batch=3,
        )
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-5)
    whole_strides = all((n - p) % t == 0 for n, p, t in zip(shape, patch, stride, strict=True))
    overlap = tuple(1 - t / p for t, p in zip(stride, patch, strict=True))
    monai = _monai_posteriors(net, image, patch, overlap, "constant")
    assert torch.allclose(result, monai, rtol=0, atol=1e-5) == whole_strides  # MONAI's grid only coincides there


def test_strided_extent_is_radios_padding() -> None:
    assert [strided_extent(n, 8, 4) for n in (5, 8, 9, 12, 13, 20, 22)] == [8, 8, 12, 12, 16, 20, 24]
    assert strided_extent(35, 16, 8) == 40 and strided_extent(27, 16, 8) == 32


def test_importance_map_matches_monai() -> None:
    for patch in [(8, 8, 8), (7, 12, 5), (16, 32, 32)]:
        torch.testing.assert_close(
            gaussian_importance_map(patch), compute_importance_map(patch, mode="gaussian"), rtol=0, atol=1e-7
        )


def test_patch_grid_ends_flush_with_the_border() -> None:
    assert patch_starts(20, 8, 4) == [0, 4, 8, 12]
    assert patch_starts(22, 8, 4) == [0, 4, 8, 12, 14]
    assert patch_starts(18, 6, 4) == [0, 4, 8, 12]
    assert patch_starts(8, 8, 4) == [0]
    assert patch_starts(5, 8, 4) == [0]


def test_whole_volume_equals_sliding_for_a_pointwise_net(image: torch.Tensor) -> None:
    net = conv_net(2, 4, seed=2, kernel=1)
    whole = sliding_window_inference(net, image, num_outputs=4, activation="softmax", patch_size=None, size_multiple=8)
    assert whole.shape == (4, 20, 18, 22)
    expected = torch.softmax(net(image[None]), dim=1)[0].detach()
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-6)
    for stitching in ("gaussian", "average"):
        patched = sliding_window_inference(
            net, image, num_outputs=4, activation="softmax", patch_size=(8, 8, 8), stitching=stitching, size_multiple=8
        )
        torch.testing.assert_close(patched, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.sum(dim=0), torch.ones(20, 18, 22), rtol=0, atol=1e-5)


def test_patch_batch_does_not_change_the_result(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=3)
    one = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), patch_batch=1)
    four = sliding_window_inference(
        net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), patch_batch=4
    )
    torch.testing.assert_close(one, four, rtol=0, atol=1e-6)


def test_forward_passes_carry_patch_batch_patches(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=3)
    batch_sizes: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled()
        batch_sizes.append(x.shape[0])
        return net(x)

    sliding_window_inference(
        predict, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), stride=(4, 4, 4), patch_batch=4
    )
    patches = 4 * 4 * 5  # starts per axis for 20, 18, 22 with patch 8 and stride 4
    assert sum(batch_sizes) == patches
    assert batch_sizes == [4] * (patches // 4)


def test_small_volume_is_padded_and_cropped_back() -> None:
    net = conv_net(1, 2, seed=4, kernel=1)
    small = torch.randn((1, 5, 6, 7))
    seen: list[tuple[int, ...]] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[2:]))
        return net(x)

    out = sliding_window_inference(
        predict, small, num_outputs=2, activation="softmax", patch_size=(16, 16, 16), size_multiple=4
    )
    assert out.shape == (2, 5, 6, 7)
    # the patch shrinks to the volume padded to the size multiple, so one forward pass of (8, 8, 8)
    assert seen == [(8, 8, 8)]
    torch.testing.assert_close(out, torch.softmax(net(small[None]), 1)[0].detach(), rtol=0, atol=1e-6)


def test_bad_network_output_is_explained(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=5)
    with pytest.raises(ValueError, match="4 output channels"):
        sliding_window_inference(net, image, num_outputs=4, activation="softmax", patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="stride"):
        sliding_window_inference(
            net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), stride=(4, 9, 4)
        )
    with pytest.raises(ValueError, match="multiples of 16"):
        sliding_window_inference(
            net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), size_multiple=16
        )


def test_cpu_accumulators_when_allocation_runs_out_of_memory(
    image: torch.Tensor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    net = conv_net(2, 3, seed=6)
    reference = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8))
    real_zeros = sliding_window._zeros
    calls: list[torch.device] = []

    def zeros_failing_once(
        num_outputs: int, grid: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(device)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_zeros(num_outputs, grid, device)

    monkeypatch.setattr(sliding_window, "_zeros", zeros_failing_once)
    with caplog.at_level(logging.WARNING, logger="innereye_batch.engine.sliding_window"):
        result = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8))
    assert len(calls) == 2 and calls[1] == torch.device("cpu")
    assert "kept on the CPU" in caplog.text and "out of memory" in caplog.text
    assert torch.equal(result, reference)


def test_cpu_accumulators_when_the_estimate_exceeds_the_limit(
    image: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    net = conv_net(2, 3, seed=6)
    reference = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8))
    with caplog.at_level(logging.WARNING, logger="innereye_batch.engine.sliding_window"):
        result = sliding_window_inference(
            net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), max_output_bytes=1000
        )
    assert "max_output_bytes" in caplog.text
    assert result.device == torch.device("cpu")
    assert torch.equal(result, reference)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="innereye_batch.engine.sliding_window"):
        sliding_window_inference(
            net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), max_output_bytes=10**9
        )
    assert "kept on the CPU" not in caplog.text


def test_amp_on_cpu_is_bf16_where_the_cpu_computes_it(image: torch.Tensor) -> None:
    from innereye_batch.engine.sliding_window import cpu_computes_bf16

    net = conv_net(2, 3, seed=3)
    plain = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8))
    amp = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), amp=True)
    assert amp.dtype == torch.float32  # stitched in float32 whatever the forward pass computed in
    if cpu_computes_bf16():
        assert not torch.equal(plain, amp)  # bf16 convolutions: close, not identical
        torch.testing.assert_close(amp, plain, rtol=0, atol=0.05)
    else:
        assert torch.equal(plain, amp)  # no bf16 on this CPU: fp32 as without --amp


def test_the_recorded_precision_is_what_amp_autocast_computes_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """predictions.json says what the networks computed in: --amp without bf16 on this CPU stays float32, and
    is recorded so; where the CPU has bf16 (patched here) the record and the autocast both say bfloat16."""
    cpu = torch.device("cpu")
    for bf16 in (False, True):
        monkeypatch.setattr(sliding_window, "cpu_computes_bf16", lambda bf16=bf16: bf16)
        with sliding_window.amp_autocast(cpu, True):
            computed = torch.ones(2, 2) @ torch.ones(2, 2)
        assert sliding_window.precision_of(cpu, True) == ("bfloat16 autocast" if bf16 else "float32")
        assert computed.dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert sliding_window.precision_of(cpu, False) == "float32"


def test_tf32_is_recorded_only_on_gpus_that_have_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN computes float32 convolutions in TF32 from Ampere (compute capability 8) on; a V100 or T4 does not."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    for major, expected in ((7, "float32"), (8, "float32 (TF32 convolutions)"), (9, "float32 (TF32 convolutions)")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, major=major: (major, 0))
        assert sliding_window.precision_of(cuda, False) == expected
        assert sliding_window.precision_of(cuda, True) == "float16 autocast"


def test_logits_are_stitched_as_monai_stitches_a_raw_network(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=4)
    with torch.no_grad():
        expected = monai_sliding_window(
            image[None], roi_size=(8, 8, 8), sw_batch_size=2, predictor=net, overlap=0.5, mode="gaussian"
        )[0]
    logits = sliding_window_inference(net, image, num_outputs=3, patch_size=(8, 8, 8), stitching="gaussian")
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert float(logits.min()) < 0 or float(logits.max()) > 1  # logits, not probabilities


def test_sigmoid_is_applied_per_channel_before_stitching(image: torch.Tensor) -> None:
    net = conv_net(2, 3, seed=5, kernel=1)  # pointwise: stitching changes nothing, so the activation is exact
    result = sliding_window_inference(net, image, num_outputs=3, patch_size=(8, 8, 8), activation="sigmoid")
    expected = torch.sigmoid(net(image[None]))[0].detach()
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(result.sum(dim=0), torch.ones(20, 18, 22))  # independent channels, not softmax
    with pytest.raises(ValueError, match="activation"):
        sliding_window_inference(net, image, num_outputs=3, patch_size=(8, 8, 8), activation="relu")  # type: ignore[arg-type]


def test_auto_patch_batch_on_a_cpu_and_from_free_memory(image: torch.Tensor) -> None:
    from innereye_batch.engine.sliding_window import CPU_PATCH_BATCH, patch_batch_for_memory

    net = conv_net(2, 3, seed=3)
    sizes: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return net(x)

    auto = sliding_window_inference(
        predict, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), patch_batch=0
    )
    assert sizes[0] == CPU_PATCH_BATCH and sum(sizes) == 4 * 4 * 5
    one = sliding_window_inference(net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), patch_batch=1)
    torch.testing.assert_close(auto, one, rtol=0, atol=1e-6)
    gib = 2**30
    assert patch_batch_for_memory(16 * gib, gib, 100) == 8  # half the free memory
    assert patch_batch_for_memory(16 * gib, gib, 3) == 3  # never more than the patches
    assert patch_batch_for_memory(gib, 4 * gib, 100) == 1  # at least one
    assert patch_batch_for_memory(1000 * gib, gib, 100) == 32  # capped
    # past 2**24 voxels per pass a GPU gains almost nothing from a larger batch, and its memory grows
    assert patch_batch_for_memory(1000 * gib, gib, 200, 64 * 128 * 128) == 16
    assert patch_batch_for_memory(1000 * gib, gib, 200, 32 * 64 * 64) == 32
    assert patch_batch_for_memory(1000 * gib, gib, 200, 96 * 96 * 96) == 19  # rounded up
    assert patch_batch_for_memory(6 * gib, gib, 200, 64 * 128 * 128) == 3  # memory still decides first
    assert patch_batch_for_memory(1000 * gib, gib, 200, 128 * 256 * 512) == 1


def test_fixed_batch_pads_the_last_batch_and_keeps_the_result(image: torch.Tensor) -> None:
    """As on CUDA with cuDNN's autotuning on: every forward pass gets the full patch batch (a new shape costs a
    search), the padding patches' outputs are dropped, and the result equals the unpadded run's."""
    net = conv_net(2, 3, seed=3)
    shapes: list[tuple[int, ...]] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return net(x)

    kwargs = {"num_outputs": 3, "activation": "softmax", "patch_size": (8, 8, 8), "stride": (4, 4, 4)}
    padded = sliding_window_inference(predict, image, patch_batch=7, fixed_batch=True, **kwargs)  # type: ignore[arg-type]
    patches = 4 * 4 * 5
    assert len(shapes) == -(-patches // 7) and set(shapes) == {(7, 2, 8, 8, 8)}  # 80 = 11 * 7 + 3: last padded
    shapes.clear()
    plain = sliding_window_inference(predict, image, patch_batch=7, fixed_batch=False, **kwargs)  # type: ignore[arg-type]
    assert shapes[-1][0] == patches % 7
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-6)


def test_an_automatic_patch_batch_is_chosen_once_per_memo(image: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """The predictor keeps a memo across series: the first series chooses, later ones reuse the choice even
    when the free memory (here: the chooser's answer) has changed since."""
    net = conv_net(2, 3, seed=3)
    answers = iter([5, 2])
    monkeypatch.setattr(sliding_window, "auto_patch_batch", lambda *args, **kwargs: next(answers))
    memo: dict[tuple[object, ...], int] = {}
    batch_sizes: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(x.shape[0])
        return net(x)

    for _ in range(2):
        sliding_window_inference(
            predict, image, num_outputs=3, patch_size=(8, 8, 8), stride=(4, 4, 4), patch_batch=0, chosen_batches=memo
        )
    assert list(memo.values()) == [5] and max(batch_sizes) == 5 and batch_sizes.count(5) == 2 * (80 // 5)
    batch_sizes.clear()
    sliding_window_inference(predict, image, num_outputs=3, patch_size=(8, 8, 8), stride=(4, 4, 4), patch_batch=0)
    assert max(batch_sizes) == 2  # without a memo: chosen again
