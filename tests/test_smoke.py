"""End-to-end smoke test: the demo network runs forward and backward on a small scan."""
import torch

from warpsparse.demo import SparseUNet, load_scan


def test_unet_forward_backward_on_scan():
    scan = load_scan(voxel_size=0.8)
    model = SparseUNet(scan.num_channels, num_classes=4, widths=(8, 16))
    out = model(scan)
    assert out.num_points == scan.num_points and out.num_channels == 4
    out.features.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
