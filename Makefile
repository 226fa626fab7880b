# Common loops for Viridian. `make help` lists them.
SWIFT ?= swift
VERSION := $(shell cat VERSION)
# What the build and `make demo` need: libraries and tools, none of which ships a service.
DEMO_PACKAGES := libudev-dev libdrm-dev libseccomp-dev pkg-config iproute2 libnbd-bin
# What the tests need on top (installed by `make test`, which CI runs): the tools the process tests
# drive, QEMU and debootstrap for the real guest, the kernel headers and sparse for KernelGlue's
# checks, and the Debian packaging tools. chronyd is not installed (that would replace
# systemd-timesyncd): scripts/test-tools.sh unpacks it into .cache/tools, with the libraries it
# links against installed here.
TEST_PACKAGES := fuse3 fio e2fsprogs iperf3 socat iputils-ping qemu-system-x86 debootstrap cpio lz4 python3 \
	sparse make gcc xz-utils linux-headers-cloud-amd64 linux-headers-amd64 rsync \
	dpkg-dev debhelper dh-dkms help2man lintian \
	libcap2 libedit2 libgnutls30 libnettle8 libseccomp2
DEB_PACKAGES := dpkg-dev debhelper dh-dkms help2man lintian

.PHONY: help deps test-deps deb-deps build demo test bench clean guest guest-image debs kernelglue-check \
	test-sanitizers fuzz fuzz-smoke fuzz-regressions

help:
	@echo "make demo   install build dependencies, build, start viridian-host and join it with viridian-agent"
	@echo "make test   install the test packages, run the test suite (as root also KernelGlue's checks, the packages and the QEMU guest)"
	@echo "make bench  run the ring and process-boundary benchmarks (release build)"
	@echo "make deps   install the Debian packages the build and the demo need (needs root)"
	@echo "make debs   build the viridian-agent, viridian-glue-dkms and viridian-host .debs into dist/, lintian them"
	@echo "make guest  boot Debian's stock kernel in QEMU, join it to viridian-host through KernelGlue, list its devices (root)"
	@echo "make guest-image    build the QEMU test guest into .cache/guest (debootstrap, kernel, the .debs installed by apt; root)"
	@echo "make kernelglue-check  build KernelGlue with W=1 against both Debian 12 header flavours, sparse, checkpatch"
	@echo "make test-sanitizers   the in-memory suites under AddressSanitizer and ThreadSanitizer"
	@echo "make fuzz   every libFuzzer target for 10 minutes (scripts/fuzz.sh; FUZZ_SECONDS, FUZZ_JOBS)"

# Installs the named Debian packages that are missing (apt-get, as root or through sudo).
define apt_install
	@if dpkg -s $(1) >/dev/null 2>&1; then echo "$(2): already installed"; else \
		export DEBIAN_FRONTEND=noninteractive; \
		sudo=$(if $(filter 0,$(shell id -u)),,sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $(1); fi
endef

deps:
	$(call apt_install,$(DEMO_PACKAGES),deps)

test-deps: deps
	$(call apt_install,$(TEST_PACKAGES),test-deps)
	scripts/test-tools.sh

deb-deps: deps
	$(call apt_install,$(DEB_PACKAGES),deb-deps)

build:
	$(SWIFT) build

demo: deps build
	./scripts/demo.sh

# The process tests start the built viridian-host and viridian-agent, so build everything first. As
# root (CI), the KernelGlue checks run, the packages are built and linted, and the QEMU test guest
# is built from them (cached in .cache/) so its end-to-end tests run too.
# The QEMU guest runs last, on its own: software emulation takes both cores while the guest boots,
# and the timing-sensitive tests (heartbeat loss) should not share them with it.
test: test-deps
	$(SWIFT) build --build-tests
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory kernelglue-check guest-image; \
		else echo "test: not root: KernelGlue checks, the packages and the QEMU guest tests are skipped"; fi
	$(SWIFT) test --skip QEMUGuestTests
	$(MAKE) --no-print-directory fuzz-regressions test-sanitizers fuzz-smoke
	$(SWIFT) test --filter QEMUGuestTests

# The suites that need no processes, QEMU or root, under both sanitizers (each its own build
# directory). The emulated-device suites run no threads of their own and take minutes under TSan:
# they run under ASan only. LeakSanitizer is off: the in-memory machines of the tests keep reference cycles
# until exit (see the issue note); ASan still stops at the first bad access.
IN_MEMORY := --skip ProcessTests --skip QEMUGuestTests
test-sanitizers:
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --sanitize=address --build-path .build/asan $(IN_MEMORY)
	$(SWIFT) test --sanitize=thread --build-path .build/tsan $(IN_MEMORY) --skip EmulatedTests

# Every decoder and state machine that takes bytes from the other side, under libFuzzer.
FUZZ_SECONDS ?= 600
FUZZ_JOBS ?= 2
fuzz:
	scripts/fuzz.sh --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS)
# CI: 20 s of each target (thirteen at a time), the committed crash inputs replayed first.
fuzz-smoke:
	scripts/fuzz.sh --seconds 20 --jobs 13
# The committed crash inputs through the plain build (no libFuzzer needed).
fuzz-regressions:
	@for t in $$(.build/debug/viridian-fuzz list | awk '{print $$1}'); do \
		if [ -d Fuzz/regressions/$$t ]; then .build/debug/viridian-fuzz run $$t Fuzz/regressions/$$t || exit 1; fi; done

# The three packages (release binaries with the Swift runtime linked statically), linted.
debs: deb-deps
	Packaging/build-debs.sh

# The test guest: the packages installed by apt in its root, and a newer build of the agent's
# package (revision 2) staged in /root/debs for the upgrade test.
DEB_AGENT := dist/viridian-agent_$(VERSION)-1_amd64.deb
DEB_GLUE := dist/viridian-glue-dkms_$(VERSION)-1_all.deb
DEB_AGENT_UPGRADE := dist/upgrade/viridian-agent_$(VERSION)-2_amd64.deb
# KernelGlue's VMBus core goes in too (built here against the guest kernel's headers), for the
# test mode where the kernel's own hv_storvsc, hv_netvsc and hv_utils drive the host's devices.
guest-image: debs
	Packaging/build-debs.sh --revision 2 --only viridian-agent --no-lintian --out dist/upgrade
	@kdir=$$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n1); \
	if [ -z "$$kdir" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-headers-cloud-amd64 >/dev/null || exit 1; \
		kdir=$$(ls -d /usr/src/linux-headers-*-cloud-amd64 | sort -V | tail -n1); \
	fi; \
	scripts/kernelglue-check.sh --ko-for $$kdir dist/kernelglue
	scripts/guest/make-image.sh --deb $(DEB_AGENT) --deb $(DEB_GLUE) --stage-deb $(DEB_AGENT_UPGRADE) \
		--vmbus-core dist/kernelglue/viridian_vmbus.ko

guest: deps build guest-image
	scripts/guest/demo.sh

kernelglue-check:
	scripts/kernelglue-check.sh

bench:
	$(SWIFT) build -c release
	.build/release/viridian-bench ring
	.build/release/viridian-bench link

clean:
	rm -rf .build .build-deb dist
