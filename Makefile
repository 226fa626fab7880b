# Common loops for Viridian. `make help` lists them.
SWIFT ?= swift
APT_PACKAGES := libudev-dev libdrm-dev pkg-config chrony iproute2 libnbd-bin fuse3 fio e2fsprogs iperf3 socat iputils-ping \
	qemu-system-x86 debootstrap cpio lz4 python3 sparse make gcc xz-utils linux-headers-cloud-amd64 linux-headers-amd64

.PHONY: help deps build demo test bench clean guest guest-image guest-agent kernelglue-check

help:
	@echo "make demo   install build dependencies, build, start viridian-host and join it with viridian-agent"
	@echo "make test   run the test suite"
	@echo "make bench  run the ring and process-boundary benchmarks (release build)"
	@echo "make deps   install the Debian packages the build needs (needs root)"
	@echo "make guest  boot Debian's stock kernel in QEMU, join it to viridian-host through KernelGlue, list its devices (root)"
	@echo "make guest-image    build the QEMU test guest into .cache/guest (debootstrap, kernel, KernelGlue, agent; root)"
	@echo "make kernelglue-check  build KernelGlue with W=1 against both Debian 12 header flavours, sparse, checkpatch"

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

# The process tests start the built viridian-host and viridian-agent, so build everything first. As
# root (CI), the KernelGlue checks run and the QEMU test guest is built (cached in .cache/) so its
# end-to-end test runs too.
# The QEMU guest runs last, on its own: software emulation takes both cores while the guest boots,
# and the timing-sensitive tests (heartbeat loss) should not share them with it.
test:
	$(SWIFT) build --build-tests
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory kernelglue-check guest-image; \
		else echo "test: not root: KernelGlue checks and the QEMU guest test are skipped"; fi
	$(SWIFT) test --skip QEMUGuestTests
	$(SWIFT) test --filter QEMUGuestTests

# The agent for the guest: release build, Swift runtime linked statically (the guest has no Swift).
GUEST_AGENT := .build-guest/release/viridian-agent
guest-agent:
	$(SWIFT) build -c release --product viridian-agent --static-swift-stdlib --scratch-path .build-guest

guest-image: guest-agent
	scripts/guest/make-image.sh --agent $(GUEST_AGENT)

guest: deps build guest-image
	scripts/guest/demo.sh

kernelglue-check:
	scripts/kernelglue-check.sh

bench:
	$(SWIFT) build -c release
	.build/release/viridian-bench ring
	.build/release/viridian-bench link

clean:
	rm -rf .build
