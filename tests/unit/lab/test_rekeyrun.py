"""The gap analysis of a paced UDP flow and the attribution of gaps to IKE messages
(bench/rekey.py and tests/interop/test_rekey_traffic.py judge renewals by them)."""

from __future__ import annotations

from ikev1d_lab.rekeyrun import IkeMessage, attribute
from ikev1d_lab.udpflow import Gap, analyse

PPS = 100.0  # one datagram every 10 ms


def paced(n: int, start: float = 1000.0) -> list[tuple[int, float, float]]:
    """n datagrams sent on time and received 1 ms later."""
    return [(i, start + i / PPS, start + i / PPS + 0.001) for i in range(n)]


def test_a_tunnel_outage_is_a_gap_with_its_bounds() -> None:
    arrivals = [a for a in paced(100) if not 40 <= a[0] < 48]  # 80 ms without delivery
    summary = analyse(arrivals, PPS, gap_floor_ms=50.0)
    assert summary["unique"] == 92
    ((start, end, ms),) = summary["gaps"]
    assert abs(ms - 90.0) < 1e-6  # from datagram 39 to 48
    assert (start, end) == (arrivals[39][2], arrivals[40][2])
    assert abs(summary["max_gap_ms"] - ms) < 1e-9
    assert abs(summary["gap_at_s"] - 0.39) < 1e-9


def test_a_late_sender_is_not_the_tunnels_gap() -> None:
    # The sender was not scheduled for 200 ms (datagrams 50.. sent late), the
    # tunnel delivered each 1 ms after it was sent.
    arrivals = [(i, s + (0.2 if i >= 50 else 0.0), r + (0.2 if i >= 50 else 0.0))
                for i, s, r in paced(100)]
    summary = analyse(arrivals, PPS, gap_floor_ms=15.0)
    assert summary["gaps"] == [] and summary["max_gap_ms"] < 10.0 + 1e-6


def test_reordered_datagrams_are_counted_not_gaps() -> None:
    arrivals = paced(20)
    arrivals[5], arrivals[6] = arrivals[6], arrivals[5]
    summary = analyse(arrivals, PPS, gap_floor_ms=50.0)
    assert summary["reordered"] == 1 and summary["gaps"] == []


def test_only_the_longest_gaps_are_kept_in_order() -> None:
    arrivals = [(i, i / PPS, i / PPS + (i // 2) * 0.06) for i in range(2000)]
    gaps = analyse(arrivals, PPS, gap_floor_ms=1.0)["gaps"]
    assert len(gaps) == 500 and gaps == sorted(gaps)


def test_a_gap_is_the_renewals_when_a_message_is_within_the_window() -> None:
    qm = IkeMessage(10.0, "A", "QM")
    info = IkeMessage(20.0, "B", "INFO")
    gaps = [
        Gap(9.95, 10.03, 80.0),  # the message arrives during the gap
        Gap(10.09, 10.17, 80.0),  # starts 90 ms after it
        Gap(9.80, 9.89, 90.0),  # ends 110 ms before it: not the renewal's
        Gap(19.85, 19.91, 60.0),  # the nearest message wins
        Gap(29.5, 29.8, 300.0),  # a long outage with a message far from both ends
    ]
    mm = IkeMessage(29.65, "B", "MM")
    found = attribute(gaps, [qm, info, IkeMessage(19.95, "A", "QM"), mm])
    assert [a.near for a in found] == [qm, qm, None, IkeMessage(19.95, "A", "QM"), mm]
    assert attribute(gaps, [], window=1.0)[0].near is None
