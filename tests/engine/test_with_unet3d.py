"""The engine with the package's own UNet3D: padding to its size multiple, patches vs whole volume, ensembles."""

from __future__ import annotations

import torch

from innereye_batch.engine.ensemble import predict_posteriors
from innereye_batch.engine.sliding_window import sliding_window_inference
from innereye_batch.model.architectures import build_network, size_multiple_of
from innereye_batch.model.spec import ArchitectureSpec, InferenceSpec

UNET = ArchitectureSpec(
    name="UNet3D", params={"initial_feature_channels": 2, "kernel_size": 3, "num_downsampling_paths": 2}
)


def _unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(UNET, in_channels=1, out_channels=3).eval()


def test_unet_runs_whole_volume_and_in_patches() -> None:
    multiple = size_multiple_of(UNET)
    assert multiple == (4, 4, 4)
    image = torch.randn((1, 10, 13, 15))
    net = _unet(1)
    whole = sliding_window_inference(
        net, image, num_outputs=3, activation="softmax", patch_size=None, size_multiple=multiple
    )
    assert whole.shape == (3, 10, 13, 15)
    torch.testing.assert_close(whole.sum(0), torch.ones(10, 13, 15), rtol=0, atol=1e-5)
    # one patch that covers the padded volume is the whole-volume pass
    single = sliding_window_inference(
        net, image, num_outputs=3, activation="softmax", patch_size=(16, 16, 16), size_multiple=multiple, padding="edge"
    )
    torch.testing.assert_close(single, whole, rtol=0, atol=1e-6)
    patched = sliding_window_inference(
        net, image, num_outputs=3, activation="softmax", patch_size=(8, 8, 8), size_multiple=multiple
    )
    assert patched.shape == whole.shape
    # a 3x3x3 U-Net sees patch borders, so patches differ from the whole volume, but only a little
    assert 0 < float((patched - whole).abs().mean()) < 0.1


def test_unet_ensemble_is_the_mean() -> None:
    image = torch.randn((1, 12, 12, 12))
    nets = [_unet(seed) for seed in (1, 2)]
    spec = InferenceSpec(patch_size=(8, 8, 8), stride=(4, 4, 4), size_multiple=4)
    each = [predict_posteriors([n], image, spec, num_outputs=3, activation="softmax") for n in nets]
    both = predict_posteriors(nets, image, spec, num_outputs=3, activation="softmax")
    torch.testing.assert_close(both, (each[0] + each[1]) / 2, rtol=0, atol=1e-6)


def test_an_anisotropic_unet_pads_each_axis_to_its_own_multiple() -> None:
    """downsampling_factor [1, 2, 2] with 2 paths: sizes must be multiples of (1, 4, 4), as InnerEye's
    crop_size_constraints. A volume 5 slices deep runs at its own depth, as InnerEye runs it; before, every axis
    took the lcm (4), so its slices were edge-padded to 8 and the posteriors differed from InnerEye's."""
    spec = ArchitectureSpec("UNet3D", {**UNET.params, "downsampling_factor": [1, 2, 2]})
    assert size_multiple_of(spec) == (1, 4, 4)
    torch.manual_seed(0)
    network = build_network(spec, in_channels=1, out_channels=3).eval()
    seen: list[tuple[int, ...]] = []

    def recording(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape[2:]))
        return network(batch)

    image = torch.randn((1, 5, 13, 15))
    for patch_size in (None, (6, 8, 8)):
        seen.clear()
        out = sliding_window_inference(
            recording, image, num_outputs=3, activation="softmax", patch_size=patch_size, size_multiple=(1, 4, 4)
        )
        assert out.shape == (3, 5, 13, 15)
        assert {shape[0] for shape in seen} == {5}  # never padded in z
    with torch.no_grad():
        alone = torch.softmax(network(torch.nn.functional.pad(image[None], (0, 1, 1, 2, 0, 0), mode="replicate")), 1)
        whole = sliding_window_inference(
            network, image, num_outputs=3, activation="softmax", patch_size=None, size_multiple=(1, 4, 4)
        )
    torch.testing.assert_close(whole, alone[0, :, :, 1:14, 0:15])
