"""ikev1d_lab: the rig for interop tests, `ikev1d demo` and bench/.

Real peers instead of mocks, each in its own Linux network namespace:

- `netns`: uniquely named namespaces (``ikv1d-<pid>-<n>-<label>``), veth pairs,
  the two-host topology (192.0.2.1 / 192.0.2.2, inner 10.1.0.1 / 10.2.0.1 on lo),
  robust cleanup (`cleanup_stale` removes leftovers of dead runs).
- `strongswan`: a strongSwan charon per namespace (private /run, vici socket and
  log in a work dir), swanctl.conf rendering for IKEv1 PSK connections.
- `capture`: dumpcap inside a namespace, tshark dissection to JSON.
- `ping`: ICMP echo from a namespace (this machine has no ping binary).
- `demo`, `demo_exchange`, `demo_pcap`: what `ikev1d demo` runs and shows.
- `daemon`: ikev1d itself in a namespace, driven through its CLI (kept by the
  interop-test authors).
- `errors`: `LabError`, the root of the lab's exceptions.

Submodules are imported explicitly; importing the package itself is cheap.
"""
