# hostpath-csi: a CSI driver for node-local directory volumes.
# Run `make help` for the targets.

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
LDFLAGS := -X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=$(VERSION)
OUT     := _output
GO      ?= go

# make run: everything under ./_output, so nothing outside the checkout is touched.
RUN_FLAGS ?= --endpoint=unix://$(CURDIR)/$(OUT)/csi.sock --state-dir=$(CURDIR)/$(OUT)/state \
	--data-dir=$(CURDIR)/$(OUT)/data --http-endpoint=127.0.0.1:9808 --nodeid=$(shell hostname)

# Fuzz targets as package:Target; `make test` runs each for FUZZTIME_SHORT,
# `make fuzz` for FUZZTIME.
FUZZ_TARGETS := internal/ids:FuzzValidateVolumeID internal/ids:FuzzParseNFSVolumeID pkg/driver:FuzzParseParameters \
	pkg/driver:FuzzExpandSubDir pkg/driver:FuzzCapacityRange pkg/driver:FuzzRequirePath pkg/driver:FuzzPageToken
FUZZTIME_SHORT ?= 3s
FUZZTIME ?= 2m
# make torture: the kill storm with many more kills than the short one in make test.
TORTURE_KILLS ?= 200
# make powercut: power cuts of a VM running the driver, on ext4 and on xfs
# (make test runs 2 of each).
POWERCUT_CUTS ?= 30

# The driver image's name and tag: the ones deploy/kubernetes uses.
IMAGE     ?= hostpath-csi/hostpath-plugin
IMAGE_TAG ?= $(shell awk '$$1=="-" && $$3=="$(IMAGE)" {getline; print $$2}' deploy/kubernetes/components/images/kustomization.yaml)
# A container engine that answers (a docker client without a daemon does
# not count); empty: make image writes an archive instead. ENGINE=none
# forces the archive.
ENGINE    ?= $(shell for e in docker podman; do command -v $$e >/dev/null && $$e info >/dev/null 2>&1 && { echo $$e; break; }; done)
IMAGE_ARCHIVE  = $(OUT)/hostpath-plugin-$(IMAGE_TAG).oci.tar

.PHONY: help build test test-deps bench lint run demo clean fuzz fuzz-short torture powercut image image-archive e2e e2e-nfs e2e-cluster e2e-down conformance helm

help:
	@echo "make build   build hostpath-plugin and csictl into $(OUT)/ (version $(VERSION))"
	@echo "make run     run the driver on $(OUT)/csi.sock with state and data under $(OUT)/"
	@echo "make demo    (with make run going) create, publish, write, unpublish and delete a volume"
	@echo "make test    lint, unit tests with -race, csi-sanity, the 50-kill crash test and 2+2 power cuts"
	@echo "make test-deps  say which Debian packages make test needs that are missing (make test runs it first)"
	@echo "make bench   Go benchmarks and the load tool against a fresh driver"
	@echo "make lint    gofmt and go vet"
	@echo "make fuzz    each fuzz target for $(FUZZTIME) (make test runs them for $(FUZZTIME_SHORT))"
	@echo "make torture the kill storm with $(TORTURE_KILLS) SIGKILLs (make test runs 50)"
	@echo "make powercut $(POWERCUT_CUTS) power cuts of a VM running the driver on ext4, then on xfs (make test runs 2 each)"
	@echo "make image   build the driver image $(IMAGE):$(IMAGE_TAG) with docker or podman; without a working one, make image-archive"
	@echo "make image-archive  no engine: the same image as $(IMAGE_ARCHIVE), for kind load image-archive,"
	@echo "             minikube image load, k3s ctr images import (needs root: debootstrap makes its Debian 12 root filesystem)"
	@echo "make helm    build the helm command (the version test/helm's go.mod names) into $(OUT)/bin/helm"
	@echo "make e2e     a real one-node Kubernetes here (root), the driver deployed, every scenario, torn down"
	@echo "make e2e-nfs a VM (qemu) with a kernel NFS server: the driver provisions, publishes, snapshots, restores, deletes on it"
	@echo "make conformance  the Kubernetes External Storage e2e suite on that cluster, per class (CONFORMANCE_SUBSET=patterns: CI's quick pass)"
	@echo "make e2e-cluster  bring that cluster up with the driver deployed and print its kubeconfig"
	@echo "make e2e-down     tear it down"

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(OUT)/ ./cmd/...

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	cd test/e2e && $(GO) vet ./...
	cd test/helm && $(GO) vet ./...

# Tests that mount (node service, sanity, crash) need root; elsewhere they
# skip and say so, or fail with HOSTPATH_TEST_REQUIRE_ALL=1 (CI sets it),
# as do tests whose tools are missing: test-deps says first what to install.
# testsum prints go test's package lines, each failed test's whole output,
# and every skipped test with its reason (the whole stream: _output/test.json).
test: test-deps lint
	@mkdir -p $(OUT) && $(GO) build -o $(OUT)/testsum ./hack/testsum
	bash -o pipefail -c '$(GO) test -race -count=1 -timeout 20m -json ./... | $(OUT)/testsum -log $(OUT)/test.json'
	cd test/e2e && $(GO) test -race -count=1 ./standins/... ./tools/...
	cd test/helm && $(GO) test -count=1 ./...
	$(MAKE) --no-print-directory fuzz-short

test-deps:
	@./hack/check-test-deps.sh

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT)

fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg/ || exit 1; done

torture:
	HOSTPATH_CRASH_KILLS=$(TORTURE_KILLS) $(GO) test -count=1 -v -timeout 60m -run TestKillStorm ./test/crash/

# Each cut costs one boot of a VM under software emulation (about 20-50 s here).
powercut:
	HOSTPATH_POWERCUT_CUTS=$(POWERCUT_CUTS) $(GO) test -count=1 -v -timeout 180m -run TestPowerCut ./test/powercut/
# make image: with docker or podman, the Dockerfile; without, the same image
# as an archive (hack/image-archive.sh: hack/rootfs.sh and hack/mkimage, as
# the e2e makes its driver image).
image:
	@e='$(ENGINE)'; if [ -n "$$e" ] && [ "$$e" != none ]; then \
		echo "$$e build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(IMAGE_TAG) ."; \
		$$e build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(IMAGE_TAG) .; \
	else \
		echo "no working docker or podman: writing the image as $(IMAGE_ARCHIVE)"; \
		$(MAKE) --no-print-directory image-archive; \
	fi

image-archive:
	./hack/image-archive.sh $(OUT) $(IMAGE) $(IMAGE_TAG) $(VERSION)

# The helm command, for installing charts/hostpath-csi: built from the Go
# module proxy at the version test/helm's go.mod names (a tool of that
# module, whose test renders the chart with the same Helm), so the chart
# test and the installs use one Helm.
HELM_VERSION = $(shell cd test/helm && $(GO) list -m -f '{{.Version}}' helm.sh/helm/v4)
helm:
	cd test/helm && $(GO) build -ldflags "-X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)" \
		-o $(CURDIR)/$(OUT)/bin/helm helm.sh/helm/v4/cmd/helm

# The end-to-end test against real Kubernetes (test/e2e, a module of its own
# so the main module does not depend on client-go). Needs root; builds and
# caches Kubernetes and the sidecars in /var/cache/hostpath-csi/e2e.
e2e:
	./test/e2e/scripts/e2e.sh

# The NFS end-to-end test: this kernel has no NFS, so a VM (qemu, software
# emulation) boots Debian's kernel with a kernel NFS server on its loopback
# and runs the driver against it (test/nfs). Needs qemu-system-x86 and
# busybox-static; fetches the kernel and the NFS programs with apt-get
# download into /var/cache/hostpath-csi/vm once. Skips and says why where
# it cannot run (fails instead with HOSTPATH_TEST_REQUIRE_ALL=1, as in CI). (make test runs only its quick mount check, TestMountInVM.)
e2e-nfs:
	HOSTPATH_E2E_NFS=1 $(GO) test -count=1 -v -timeout 10m ./test/nfs/

# The Kubernetes "External Storage" e2e suite (e2e.test and ginkgo built
# from the module proxy, cached with the cluster's binaries) against the
# same cluster, once per definition file in test/e2e/conformance; reports
# in _output/conformance. Needs root. See docs/testing.md (the conformance suite).
conformance:
	./test/e2e/scripts/conformance.sh

e2e-cluster:
	./test/e2e/scripts/cluster-up.sh

e2e-down:
	./test/e2e/scripts/cluster-down.sh

run: build
	$(OUT)/hostpath-plugin $(RUN_FLAGS)

demo: build
	$(OUT)/csictl -endpoint unix://$(CURDIR)/$(OUT)/csi.sock demo

bench: build
	./hack/bench.sh $(OUT)

clean:
	@if grep -qs " $(CURDIR)/$(OUT)/" /proc/self/mountinfo; then \
		echo "refusing: something is still mounted under $(OUT)/ (stop make run and unpublish first)"; exit 1; fi
	rm -rf $(OUT)
