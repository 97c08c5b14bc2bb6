"""The README's example runs as written (on CPU when there is no GPU)."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


# On CPU: bf16 autocast and 500 points in a 3 m cube, so that the interpreted Triton kernels and .dense() stay small.
CPU_EDITS = [('"cuda"', '"cpu"'), (".cuda()", ""), ("torch.float16", "torch.bfloat16"),
             ("* 20", "* 3"), ("10_000", "500")]


def example() -> str:
    """The README's one Python block."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, f"expected one python block in README.md, found {len(blocks)}"
    return blocks[0]


def test_readme_example_runs():
    code = example()
    if not torch.cuda.is_available():
        for gpu, cpu in CPU_EDITS:
            assert gpu in code, f"README example no longer contains {gpu!r}"
            code = code.replace(gpu, cpu)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    y, x, net = scope["y"], scope["x"], scope["net"]
    assert y.features.shape == (x.num_points, 32)
    assert torch.equal(y.coords, x.coords)
    assert scope["dense"].shape == (x.batch_size, 32, *x.spatial_shape)
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_readme_example_runs_on_gpu_as_written():
    exec(compile(example(), str(README), "exec"), {})
