"""tests/vm/libvirt_host.py's own decisions that need no libvirtd (the rest runs in make test-vm)."""

from __future__ import annotations

import pytest

from tests.vm import libvirt_host as lh

NET_INFO = {
    "default": "Name:           default\nActive:         yes\nBridge:         virbr0\n",
    "koa-e2e": "Name:           koa-e2e\nUUID:           1f\nActive:         yes\nBridge:         koa-e2e\n",
}


def test_a_network_running_before_libvirtd_started_is_not_stopped_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen for real: make test-toolchain started libvirtd beside a live e2e cluster (whose libvirtd
    had stopped) and destroyed that cluster's network on its way out, as if libvirtd had autostarted it."""
    monkeypatch.setattr(lh, "virsh", lambda *args, **_: NET_INFO[args[1]])
    # virbr0 is new (libvirtd autostarted Debian's default); the stack's bridge was there before.
    assert lh.started_networks(["default", "koa-e2e"], {"lo", "eth0", "koa-e2e"}) == ["default"]
    assert lh.started_networks(["default", "koa-e2e"], {"lo", "eth0"}) == ["default", "koa-e2e"]
