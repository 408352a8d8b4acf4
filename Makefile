# natlab: `make demo` runs the conformance suite, `make test` the test suite.
# Both install what is missing (apt packages, a .venv) and start Open vSwitch
# in user space; running them twice is safe.  Run as root.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=
APT_PKGS := openvswitch-switch mininet ethtool iperf3 tcpdump tshark curl iputils-ping \
            iproute2 netcat-openbsd nftables iptables nmap natpmpc chromium
STAMP   := $(VENV)/.installed

.PHONY: setup test unit demo bench lint clean ovs apt

setup: apt $(STAMP) ovs

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "natlab: installing apt packages:$$missing"; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

ovs:
	@ovs-vsctl --timeout=5 show >/dev/null 2>&1 || \
	  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor >/dev/null 2>&1 || true
	@ovs-vsctl --timeout=5 show >/dev/null || { echo "natlab: Open vSwitch did not start"; exit 1; }

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/natlab demo

bench: setup
	$(VENV)/bin/natlab bench nat

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache reports/runs
