# Common loops for Viridian. `make help` lists them.
SWIFT ?= swift
APT_PACKAGES := libudev-dev libdrm-dev pkg-config

.PHONY: help deps build demo test bench clean

help:
	@echo "make demo   install build dependencies, build, start viridian-host and join it with viridian-agent"
	@echo "make test   run the test suite"
	@echo "make bench  run the ring and process-boundary benchmarks (release build)"
	@echo "make deps   install the Debian packages the build needs (needs root)"

# Debian packages; skipped when they are all present already.
deps:
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "deps: already installed"; else \
		export DEBIAN_FRONTEND=noninteractive; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); fi

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
