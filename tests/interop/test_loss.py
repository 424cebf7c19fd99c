"""Main Mode + Quick Mode through 30 % random loss at each end (nft numgen), ikev1d
against strongSwan, each initiating: a slice of bench/loss.py. With 10 retransmissions on
both sides an attempt fails with probability about 0.3 % (ikev1d_lab.loss), so 5 attempts
each way must all but rarely succeed: at most one failure each way is tolerated.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ikev1d_lab import netns
from ikev1d_lab.loss import LossResult, loss_pair

pytestmark = pytest.mark.interop

ATTEMPTS = 5


def test_establishes_through_thirty_percent_loss(require_root_netns: None,
                                                 tmp_path: Path) -> None:
    results: dict[bool, tuple[LossResult, int]] = {}
    errors: list[BaseException] = []

    def run(we_initiate: bool) -> None:
        try:
            with netns.two_hosts() as topo:
                with loss_pair(topo, tmp_path / str(we_initiate), 30, 10, 0.1) as pair:
                    result = pair.run(ATTEMPTS, we_initiate)
                    results[we_initiate] = (result, pair.drops)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    # Both directions at once, each in its own namespaces: the attempts mostly wait.
    threads = [threading.Thread(target=run, args=(flag,)) for flag in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for we_initiate in (True, False):
        result, drops = results[we_initiate]
        assert result.established >= ATTEMPTS - 1, result.failures
        assert drops > 0  # the loss was real
