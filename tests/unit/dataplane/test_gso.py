"""UDP segmentation offload: one ``sendmsg`` per batch, and what a refusal looks like."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

import pytest

from ikev1d.dataplane.linux import gso


class _Sock:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.sent: list[tuple[list[bytes], list[tuple[int, int, bytes]]]] = []

    def sendmsg(self, buffers: Sequence[bytes], cmsgs: list[tuple[int, int, bytes]],
                flags: int, address: tuple[str, int]) -> int:
        if self.fail:
            raise OSError(self.fail, "refused")
        self.sent.append((list(buffers), list(cmsgs)))
        return sum(map(len, buffers))


def test_a_batch_goes_in_one_call_with_the_segment_size_first() -> None:
    sock = _Sock()
    source = (socket.IPPROTO_IP, 8, b"\0" * 12)
    assert gso.send_segmented(sock, [b"a" * 100, b"b" * 100, b"c" * 40], [source],  # type: ignore[arg-type]
                              ("192.0.2.2", 4500)) is None
    ((buffers, cmsgs),) = sock.sent
    assert buffers == [b"a" * 100, b"b" * 100, b"c" * 40]
    assert cmsgs == [gso.segment_cmsg(100), source]


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP])
def test_a_refused_offload_is_returned_for_the_caller_to_fall_back(code: int) -> None:
    refused = gso.send_segmented(_Sock(code), [b"x" * 10, b"y" * 10], [],  # type: ignore[arg-type]
                                 ("192.0.2.2", 4500))
    assert refused is not None and refused.errno == code


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EMSGSIZE, errno.ENOBUFS])
def test_other_errors_belong_to_the_datagrams_and_are_raised(code: int) -> None:
    with pytest.raises(OSError) as raised:
        gso.send_segmented(_Sock(code), [b"x" * 10, b"y" * 10], [],  # type: ignore[arg-type]
                           ("192.0.2.2", 4500))
    assert raised.value.errno == code
