# Common loops for Viridian. `make help` lists them.
SWIFT ?= swift
APT_PACKAGES := libudev-dev libdrm-dev pkg-config chrony iproute2 libnbd-bin fuse3 fio e2fsprogs iperf3 socat iputils-ping

.PHONY: help deps build demo test bench clean

help:
	@echo "make demo   install build dependencies, build, start viridian-host and join it with viridian-agent"
	@echo "make test   run the test suite"
	@echo "make bench  run the ring and process-boundary benchmarks (release build)"
	@echo "make deps   install the Debian packages the build needs (needs root)"

# Debian packages; skipped when they are all present already. Services the packages ship (chrony)
# are not started: policy-rc.d refuses them during the install, so nothing touches this machine's clock.
deps:
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "deps: already installed"; else \
		export DEBIAN_FRONTEND=noninteractive; \
		sudo=$(if $(filter 0,$(shell id -u)),,sudo); \
		$$sudo apt-get update -qq && \
		if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
			$$sudo chmod +x /usr/sbin/policy-rc.d; added=1; fi; \
		$$sudo apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); rc=$$?; \
		[ -n "$$added" ] && $$sudo rm -f /usr/sbin/policy-rc.d; exit $$rc; fi

build:
	$(SWIFT) build

demo: deps build
	./scripts/demo.sh

# The process tests start the built viridian-host and viridian-agent, so build everything first.
test:
	$(SWIFT) build --build-tests
	$(SWIFT) test

bench:
	$(SWIFT) build -c release
	.build/release/viridian-bench ring
	.build/release/viridian-bench link

clean:
	rm -rf .build
