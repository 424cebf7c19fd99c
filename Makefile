# ikev1d: `make demo` runs the example, `make test` runs the checks and tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEB_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
                libstrongswan-extra-plugins libstrongswan-standard-plugins \
                libcharon-extauth-plugins strongswan-pki \
                tshark iproute2 nftables iperf3 python3-venv

.PHONY: test demo lint typecheck unit deps venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests and the demo need; installed only when missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
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

typecheck: venv
	$(VENV)/bin/mypy

test: deps venv lint typecheck
	$(VENV)/bin/pytest -q -ra

demo: deps venv
	$(VENV)/bin/ikev1d demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .pytest_cache .ruff_cache

# The kernel data plane under a stock Debian kernel in qemu (this machine's kernel has
# no ESP): apt packages and virtme-ng in .vm-venv when missing, then one VM boot that
# runs tests/vm/ (results in vm-out/). Not part of `test`: see scripts/run-vm-tests.sh.
VM_DEB_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static
.PHONY: test-kernel
test-kernel: deps venv
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
	scripts/run-vm-tests.sh
