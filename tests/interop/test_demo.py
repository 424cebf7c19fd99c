"""`python -m ikev1d demo` end to end: exit 0, the key lines, nothing left behind.

The demo runs as a separate process (as `make demo` runs it), so this also checks
that it cleans up by itself: no namespace named after its pid, no daemon, no
temporary directory survives it, and a SIGTERM in the middle leaves nothing either.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.interop

DEMO = [sys.executable, "-m", "ikev1d", "demo"]  # stdout is a pipe: no colours


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("ikev1d-demo-*"))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _leftovers(pid: int, dirs_before: set[Path]) -> list[str]:
    ns = sorted(n for n in _netns() if n.startswith(f"ikdemo-{pid}-"))
    dirs = sorted(str(d) for d in _demo_dirs() - dirs_before)
    procs = [p for d in dirs for p in _processes_mentioning(d)]
    return ns + dirs + procs


def _check_certificate_step(out: str, peer: str) -> None:
    step = out[out.index("[5/7] Certificates"):out.index("[6/7] A road warrior")]
    assert ('authenticated by RSA signature ("C=CH, O=ikev1d demo, CN=site-b.example" <- '
            '"C=CH, O=ikev1d demo, CN=Demo Root CA")') in step, step
    assert "auth pubkey-rsa" in step
    assert '"auth": "pubkey-rsa"' in step
    assert "Main Mode 4  192.0.2.2 -> 192.0.2.1  KE NONCE CR" in step, step
    assert "Main Mode 5  192.0.2.1 -> 192.0.2.2  ID CERT SIG" in step, step
    assert "Main Mode 6  192.0.2.2 -> 192.0.2.1  ID CERT SIG" in step, step
    assert "each side sent CR, CERT and SIG" in step
    if "skipped: the userspace data plane" not in out and "failed to start" not in out:
        assert "3 of 3 echo replies" in step, step
    assert f"certificates established with {peer}" in out


def test_demo_runs_and_cleans_up(require_root_netns: None) -> None:
    dirs_before = _demo_dirs()
    started = time.monotonic()
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, out
    assert "\x1b[" not in out  # no colour codes when stdout is not a terminal
    # step 1: the recorded strongSwan exchange, decoded and decrypted
    for n in range(1, 7):
        assert f"Main Mode {n} " in out, out
    for n in range(1, 4):
        assert f"Quick Mode {n} " in out, out
    assert "HASH_I verified" in out and "HASH_R verified" in out
    assert "11 messages decoded, 7 decrypted, 7 HASH payloads verified" in out
    assert "ID IPV4_ADDR_SUBNET 10.2.0.0/24" in out  # from a decrypted Quick Mode message
    # step 2: two ikev1d, both logs, the status table
    assert out.count("ISAKMP SA established") >= 2
    assert out.count("IPsec SA established") >= 2
    assert "$ ikev1d status" in out
    assert "site-b: ESTABLISHED, IKEv1, initiator" in out
    assert "net: INSTALLED, TUNNEL" in out
    # step 4: strongSwan (the rig fixture guarantees it is installed)
    assert "IKE_SA site-a[1] established" in out
    assert "$ swanctl --list-sas" in out
    # step 3 only with the userspace data plane
    if "skipped: the userspace data plane" not in out and "failed to start" not in out:
        assert "received: echo: hello from 10.1.0.1" in out
        assert "the message text appears in no packet" in out
    # step 5: certificates against strongSwan, CR/CERT/SIG seen decrypted by tshark
    _check_certificate_step(out, "strongSwan")
    assert ("[IKE] authentication of 'C=CH, O=ikev1d demo, CN=site-a.example' with "
            "RSA_EMSA_PKCS1_NULL successful") in out
    # step 6: a road warrior with XAUTH gets an address from the pool and pings from it
    step = out[out.index("[6/7] A road warrior"):out.index("[7/7] Teardown")]
    assert "XAUTH authentication of 'alice' successful" in step, step
    if "skipped: the userspace data plane" not in out and "failed to start" not in out:
        assert re.search(r"3 of 3 pings from 10\.3\.0\.\d+ through the tunnel answered",
                         step), step
        assert re.search(r"road warrior: 10\.3\.0\.\d+, ping answered", out), out
    # step 7: Delete and teardown
    assert "ISAKMP SA deleted" in out and "IPsec SA deleted" in out
    assert "received DELETE for IKE_SA" in out
    assert "demo finished" in out
    assert _leftovers(proc.pid, dirs_before) == []
    assert elapsed < 90, f"the demo took {elapsed:.0f} s"


@pytest.mark.parametrize("delay", [1.0, 3.0])
def test_sigterm_midway_leaves_nothing(require_root_netns: None, delay: float) -> None:
    dirs_before = _demo_dirs()
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # `delay` seconds into the demo's run, not into the interpreter's start: on a
    # loaded machine importing takes seconds, and a process killed before it began
    # has nothing to clean up. Its title comes once SIGTERM is handled.
    assert proc.stdout is not None
    title = proc.stdout.readline()
    assert title.startswith("ikev1d demo"), title
    time.sleep(delay)
    finished_already = proc.poll() is not None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    if not finished_already:
        assert proc.returncode in (0, 130), out
        if proc.returncode == 130:
            assert "interrupted; cleaning up" in out
    assert _leftovers(proc.pid, dirs_before) == []


# SIGTERM arriving while the demo installs its SIGTERM/SIGHUP handlers (simulated at
# the one moment it can happen: between the two installations), then again once the
# demo has returned: the handler must not outlive the demo (with it left in place, the
# second SIGTERM raised KeyboardInterrupt after everything had caught it, and the
# interpreter ended by SIGINT, -2).
_SIGTERM_WHILE_INSTALLING = """
import os, signal, sys, time
import ikev1d.cli
real = signal.signal
def installing(signum, handler):
    if signum == signal.SIGHUP and callable(handler):
        signal.signal = real
        os.kill(os.getpid(), signal.SIGTERM)
    return real(signum, handler)
signal.signal = installing
code = ikev1d.cli.main(["demo"])
print("SIGTERM handler restored:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
sys.exit(code)
"""

# A second SIGTERM while the demo reports the first and cleans up: ignored, so that the
# cleanup runs to its end (it used to find the default action back in place there).
_SIGTERM_TWICE = """
import os, signal, sys
import ikev1d.cli
from ikev1d_lab import demo
def step(self):
    os.kill(os.getpid(), signal.SIGTERM)
def error(self, text):
    if "interrupted" in text:
        os.kill(os.getpid(), signal.SIGTERM)
    print(text, flush=True)
demo.Demo.step_decode = step
demo.Console.error = error
sys.exit(ikev1d.cli.main(["demo"]))
"""


def test_sigterm_while_the_handlers_go_in_leaves_none_behind(require_root_netns: None) -> None:
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_INSTALLING],
                          capture_output=True, text=True, timeout=120, check=False)
    assert "SIGTERM handler restored: True" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr


def test_a_second_sigterm_does_not_cut_the_cleanup_short(require_root_netns: None) -> None:
    dirs_before = _demo_dirs()
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_TWICE], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted; cleaning up" in out and "namespaces and files removed" in out, out
    assert _leftovers(proc.pid, dirs_before) == []


# The child starts as root, so that it can run this interpreter and read the package
# wherever the clone is (even in a directory only root can enter), imports what the
# demo needs, and only then becomes nobody: from there on it is an unprivileged
# process that asks for the demo, as a user typing `ikev1d demo` would.
_AS_NOBODY = """
import os, sys
import ikev1d.cli, ikev1d.daemon.control_client, ikev1d_lab.demo
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
sys.exit(ikev1d.cli.main(["demo"]))
"""


def test_refuses_without_root(require_root_netns: None) -> None:
    # As an unprivileged user the demo explains itself instead of failing half-way.
    proc = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY],
        capture_output=True, text=True, timeout=60, cwd="/", check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ikev1d demo needs root" in proc.stdout, proc.stdout + proc.stderr


def test_a_failing_step_reports_and_cleans_up(
    require_root_netns: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from ikev1d_lab import demo

    def broken(self: demo.Demo) -> None:
        raise demo.DemoFailure("strongSwan step broke on purpose")

    monkeypatch.setattr(demo.Demo, "step_strongswan", broken)
    dirs_before = _demo_dirs()
    out = io.StringIO()
    assert demo.run_demo([], out=out) == 1
    text = out.getvalue()
    assert "demo failed: strongSwan step broke on purpose" in text
    assert "last lines of the site A ikev1d log:" in text  # why, before the files go
    assert "namespaces and files removed" in text
    assert "demo finished" not in text
    assert _leftovers(os.getpid(), dirs_before) == []


def test_without_strongswan_the_demo_runs_the_rest(
    require_root_netns: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As on a machine where only `pip install` ran: no charon.  Every step that needs no
    # peer from outside runs, and the output says what to install for the one that does.
    import io

    from ikev1d_lab import demo

    monkeypatch.setattr(demo, "CHARON", str(tmp_path / "no-charon"))
    dirs_before = _demo_dirs()
    out = io.StringIO()
    assert demo.run_demo([], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "11 messages decoded, 7 decrypted, 7 HASH payloads verified" in text
    assert text.count("IPsec SA established") >= 2
    assert "skipped: strongSwan is not installed here" in text
    assert "ikev1d <-> strongSwan skipped (strongSwan not installed)" in text
    assert "for the step against strongSwan: apt-get install strongswan-charon" in text
    _check_certificate_step(text, "ikev1d")
    assert "ISAKMP SA deleted" in text and "demo finished" in text
    assert _leftovers(os.getpid(), dirs_before) == []


def test_an_untrusted_certificate_fails_the_certificate_step(
    require_root_netns: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Site B's certificate signed by itself instead of the demo CA: site A must refuse it,
    # and the demo must say so and fail rather than carry on.
    import io

    from ikev1d_lab import demo, pki

    real_issue = pki.issue

    def issue(subject: str, issuer: pki.Issued | None = None, **kw: Any) -> pki.Issued:
        return real_issue(subject, None if subject == demo.CERT_DN_B else issuer, **kw)

    monkeypatch.setattr(pki, "issue", issue)
    dirs_before = _demo_dirs()
    out = io.StringIO()
    assert demo.run_demo(["--no-strongswan"], out=out) == 1
    text = out.getvalue()
    assert "[5/7] Certificates" in text
    assert "demo failed: `ikev1d up site-b` on site A failed" in text, text
    assert "authentication failed" in text, text  # site A's log tail says why
    assert "demo finished" not in text
    assert _leftovers(os.getpid(), dirs_before) == []
