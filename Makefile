# natlab: `make demo` runs the conformance suite, `make test` the test suite.
# Both install what is missing (apt packages, a .venv) and start Open vSwitch
# in user space; running them twice is safe.  Run as root.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=
APT_PKGS := openvswitch-switch mininet ethtool iperf3 tcpdump tshark curl iputils-ping \
            iproute2 netcat-openbsd nftables iptables nmap \
            strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins ftp coturn \
            natpmpc chromium
STAMP   := $(VENV)/.installed
# The installers' output (apt, pip, ovs-ctl): each set-up step prints one line and shows this log if it fails.
SETUP_LOG ?= .setup.log

.PHONY: setup test unit demo bench lint clean ovs apt

setup: apt $(STAMP) ovs

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "natlab: apt packages present"; else \
	  echo "natlab: installing apt packages:$$missing (log: $(SETUP_LOG))"; \
	  { echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections && \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } \
	    > $(SETUP_LOG) 2>&1 || { cat $(SETUP_LOG); echo "natlab: apt-get failed"; exit 1; }; \
	fi

$(STAMP): pyproject.toml
	@echo "natlab: installing the Python dependencies into $(VENV) (log: $(SETUP_LOG))"
	@{ { test -x $(PY) || python3 -m venv $(VENV); } && $(PY) -m pip install -q --upgrade pip && \
	   $(PY) -m pip install -q -e '.[test]'; } > $(SETUP_LOG) 2>&1 || \
	  { cat $(SETUP_LOG); echo "natlab: pip install failed"; exit 1; }
	@touch $@

ovs:
	@if ovs-vsctl --timeout=5 show >/dev/null 2>&1; then echo "natlab: Open vSwitch running"; else \
	  echo "natlab: starting Open vSwitch (log: $(SETUP_LOG))"; \
	  /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor > $(SETUP_LOG) 2>&1; \
	  ovs-vsctl --timeout=5 show >/dev/null 2>&1 || \
	    { cat $(SETUP_LOG); echo "natlab: Open vSwitch did not start"; exit 1; }; \
	fi

test: setup lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/natlab demo

bench: setup
	$(VENV)/bin/natlab bench nat

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache reports/runs
