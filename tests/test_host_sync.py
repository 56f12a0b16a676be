"""No hidden host-device traffic: the counter itself, and the model's forwards under it."""
import math

import numpy as np
import pytest
import torch

from host_traffic import HostTraffic
from sharpose import create_model
from sharpose.models.selection import fine_children


def test_counter_sees_each_kind_of_traffic_once():
    t = torch.arange(6)
    with HostTraffic() as traffic:
        torch.tensor([0, 0, 1, 1])
        torch.as_tensor(np.arange(3))
        torch.from_numpy(np.arange(3))
        t.new_tensor([1.0])
        t.tolist()
        t[0].item()
        bool(t.any())
        int(t[1])
        t.cpu()
        t.to("cpu", torch.float32)
        t.nonzero()
        t[t > 2]
        torch.repeat_interleave(t, t)
    assert len(traffic.uploads) == 4
    assert len(traffic.reads) == 6  # each read once, not again for the scalar read underneath
    assert len(traffic.syncs) == 3
    assert all("test_host_sync.py:" in event for event in traffic.events)  # named by the calling line


def test_counter_ignores_device_side_work():
    t = torch.arange(6)
    with HostTraffic() as traffic:
        torch.as_tensor(t)  # already a tensor: no copy from Python data
        torch.zeros(3), torch.full((2,), 7), torch.arange(4)  # sizes and fill values are launch arguments
        torch.repeat_interleave(t, t, output_size=15)
        t[t[:2]]  # a gather with an index tensor
        torch.where(t > 2, t, -1) * 0.5
        t.to(torch.float16), t.to(t)
    assert traffic.events == []


def test_fine_children_build_nothing_from_python_data():
    with HostTraffic() as traffic:
        fine_children(torch.arange(12), (4, 3))
    assert traffic.events == []


def small_model(backend: str, device: torch.device, **overrides):
    return create_model("sharpose_small_256x192", depth=2, embed_dim=96, num_heads=4, backend=backend,
                        **overrides).eval().to(device)


# Under the Triton interpreter every kernel argument is copied to numpy on the host, so the
# Triton backend's forward is counted where the kernels are compiled: on a GPU.
BACKENDS = ["reference", pytest.param("triton", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton interpreter itself reads tensors on the host"),
])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_capturable_forward_has_no_host_traffic(monkeypatch, backend, device):
    """Every sample refining with the fixed budget: with the input check off (as while capturing), the
    forward builds no tensor from Python data and reads nothing back."""
    model = small_model(backend, device)
    model.qp_threshold = math.inf
    monkeypatch.setattr("sharpose.models.sharpose.is_tracing", lambda: True)
    images = torch.randn(3, 3, 256, 192, device=device)
    with torch.no_grad(), HostTraffic() as traffic:
        model(images)
    assert model.capturable and traffic.events == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("token_budget", ["fixed", "adaptive"])
def test_early_exit_forward_reads_back_exactly_once(backend, token_budget, device):
    model = small_model(backend, device, token_budget=token_budget)
    images = torch.randn(4, 3, 256, 192, device=device)
    model.qp_threshold = math.inf
    with torch.no_grad():
        model.qp_threshold = model(images).quality.median().item()
        with HostTraffic() as traffic:
            out = model(images)
    assert traffic.uploads == traffic.syncs == [] and len(traffic.reads) == 1, traffic.events
    assert 0 < int(out.refined.sum()) < 4


def test_static_fine_stage_work_is_queued_before_the_host_sync(monkeypatch):
    """The reuse block and the fine patch embedding depend on no host-side size, so the forward
    queues them before it waits on the device: the device has work while the host reads."""
    model = small_model("reference", torch.device("cpu"))
    images = torch.randn(4, 3, 256, 192)
    model.qp_threshold = math.inf
    with torch.no_grad():
        model.qp_threshold = model(images).quality.median().item()
    events = []
    model.reuse.register_forward_hook(lambda *_: events.append("reuse block"))
    for name, event in (("embed_fine_children", "fine patch embedding"), ("fetch_sizes", "host sync"),
                        ("fine_stage", "fine stage")):
        method = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, method=method, event=event: events.append(event) or method(*a))
    with torch.no_grad():
        model(images)
    assert events == ["reuse block", "fine patch embedding", "host sync", "fine stage"]
