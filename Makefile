# ikev1d: `make demo` runs the example, `make test` runs the checks and tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Every program the demo and the tests run, by Debian package: strongSwan's charon,
# swanctl and pki with the plugins the test configurations load (openssl and gcm are in
# the standard plugins, XAUTH in extauth), tshark and dumpcap, ip, nft, sysctl (procps)
# and iperf3 for the benchmarks; systemd-analyze (in systemd; installing the package
# in a container or chroot does not make it the init system) checks contrib/ikev1d.service.
DEB_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
                libstrongswan-extra-plugins libstrongswan-standard-plugins \
                libcharon-extauth-plugins strongswan-pki \
                tshark iproute2 nftables procps iperf3 systemd freeradius
# A minimal Debian has no Python at all; an interpreter given as PYTHON=... is the
# caller's own, and then only its venv module is assumed.
ifeq ($(origin PYTHON),file)
DEB_PACKAGES += python3 python3-venv
endif

.PHONY: test demo lint typecheck unit deps venv clean test-fresh fuzz test-long

# `deps` first: on a fresh machine it is what brings the interpreter.  A venv that an
# earlier run left without pip (python3-venv was missing then) is made again.
$(VENV)/.installed: pyproject.toml | deps
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests and the demo need; installed only when missing.
deps:
	@if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then \
	  echo "not a Debian system: make sure these (Debian names) are installed: $(DEB_PACKAGES)"; \
	  exit 0; \
	fi; \
	missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check src tests bench scripts
	@! grep -rnE "^\s*assert\b" src --include=*.py || (echo "assert in src/: use a typed error"; exit 1)
	$(PY) scripts/check_imports.py

typecheck: venv
	$(VENV)/bin/mypy

test: deps venv lint typecheck
	$(VENV)/bin/pytest -q -ra

# The structure-aware engine fuzzer at full length (a 20,000-case slice runs in
# `test`): a million mutated messages under tracemalloc, some 15-20 minutes.
FUZZ_CASES ?= 1000000
fuzz: venv
	$(PY) scripts/fuzz_engine.py --cases $(FUZZ_CASES)

demo: deps venv
	$(VENV)/bin/ikev1d demo

# The network-level runs at full length (bench/README.md; `test` runs a slice of each):
# a strongSwan peer under 2,000 spoofed Main Mode requests per second, 100,000 mutated
# datagrams to a running daemon, and 100 attempts each way through 30 % loss. Root;
# about 30-40 minutes.
test-long: deps venv
	$(PY) bench/flood.py --rate 2000 --seconds 60
	$(PY) bench/udp_fuzz.py --count 100000
	$(PY) bench/loss.py --attempts 100 --retransmissions 10,5

# The two commands above on a fresh minimal Debian 12 (debootstrap, then a chroot) from a
# clean clone of the committed HEAD: needs root and the network, takes 15-30 minutes.
# Not part of `test`; options (e.g. FRESH_ARGS="--cache DIR"): scripts/fresh-machine-check.sh -h
test-fresh:
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO scripts/fresh-machine-check.sh $(FRESH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .pytest_cache .ruff_cache

# The kernel data plane under a stock Debian kernel in qemu (this machine's kernel has
# no ESP): apt packages and virtme-ng in .vm-venv when missing, then one VM boot that
# runs tests/vm/ (results in vm-out/). Not part of `test`: see scripts/run-vm-tests.sh.
# test-libreswan boots it a second time for the Libreswan suite (results in
# vm-out-libreswan/): some 40 cases, rekeying and DPD waiting for real timers, so it
# gets up to an hour (VM_TIMEOUT); VM_K=... selects cases (scripts/run-vm-tests.sh).
# openssl: the Libreswan road-warrior suite hashes pluto's XAUTH passwords with
# `openssl passwd` (today freeradius brings it too; the suite should not rely on that).
VM_DEB_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static openssl
.PHONY: test-kernel test-libreswan vm-deps
vm-deps: deps venv
	@missing=""; for p in $(VM_DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi
	test -x .vm-venv/bin/vng || { $(PYTHON) -m venv .vm-venv && .vm-venv/bin/pip install -q 'virtme-ng==1.42'; }

test-kernel: vm-deps
	VM_TIMEOUT=$${VM_TIMEOUT:-2400} VM_TESTS="tests/vm --ignore-glob=tests/vm/test_libreswan*.py" \
	  scripts/run-vm-tests.sh

test-libreswan: vm-deps libreswan
	VM_TIMEOUT=$${VM_TIMEOUT:-3600} VM_TESTS="tests/vm/test_libreswan.py tests/vm/test_libreswan_rw.py" \
	  scripts/run-vm-tests.sh vm-out-libreswan

# Libreswan 4.10 (pluto), the second reference peer, for the VM suite. It conflicts with the
# strongSwan packages, so it is not installed: its .debs (and the libraries it needs that a
# strongSwan machine lacks) are unpacked with dpkg-deb into $(LIBRESWAN_DIR), from where
# src/ikev1d_lab/libreswan.py runs it inside the guest.
LIBRESWAN_DIR  := .vm-cache/libreswan
LIBRESWAN_DEBS := libreswan libnss3-tools libevent-pthreads-2.1-7 libldns3
.PHONY: libreswan
libreswan: $(LIBRESWAN_DIR)/.unpacked
$(LIBRESWAN_DIR)/.unpacked:
	rm -rf $(LIBRESWAN_DIR) && mkdir -p $(LIBRESWAN_DIR)/debs
	cd $(LIBRESWAN_DIR)/debs && { apt-get download $(LIBRESWAN_DEBS) || \
	  { apt-get update -q && apt-get download $(LIBRESWAN_DEBS); }; }
	for deb in $(LIBRESWAN_DIR)/debs/*.deb; do dpkg-deb -x "$$deb" $(LIBRESWAN_DIR)/root || exit 1; done
	LD_LIBRARY_PATH=$(LIBRESWAN_DIR)/root/usr/lib/x86_64-linux-gnu \
	  $(LIBRESWAN_DIR)/root/usr/libexec/ipsec/pluto --version
	touch $@
