"""Fakes for unit tests: in-process stand-ins for the services medmesh talks to.

- :class:`FakeKubo`: kubo's RPC API (the endpoints :class:`~medmesh.storage.backends.kubo.KuboStore`
  uses), served over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

from medmesh.testing.fake_kubo import FakeKubo, RecordedCall

__all__ = ["FakeKubo", "RecordedCall"]
