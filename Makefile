# moat — the two commands a newcomer needs are `make demo` and `make test`.
# Everything else here is a step those two take.

CARGO        ?= cargo
BUILD        := build
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_BIN    := target/$(AGENT_TARGET)/guest/moat-agent
export MOAT_BUILD_DIR := $(CURDIR)/$(BUILD)

.PHONY: all deps pyenv kernel build agent initramfs images artifacts lint test demo bench-boot bench-streaming bench-pods bench-volumes node-stress fuzz clean

all: artifacts

## Debian packages (idempotent).
deps:
	scripts/install-deps.sh

## Python gRPC clients for the CRI tests (grpcio, grpcio-tools, h2) in a venv
## under ~/.cache/moat/pyenv (idempotent; PyPI on the first run).
pyenv:
	scripts/python-cri-env.sh >/dev/null

## Guest kernel: built once per source version + config, cached in ~/.cache/moat.
kernel:
	@mkdir -p $(BUILD)
	@vmlinux=$$(kernel-config/build.sh | tail -n1) && ln -sfn "$$vmlinux" $(BUILD)/vmlinux
	@echo "guest kernel: $$(readlink $(BUILD)/vmlinux) ($$(stat -L -c %s $(BUILD)/vmlinux) bytes)"

## Host binaries (release).
build:
	$(CARGO) build --release --workspace --bins

## The guest agent, linked statically (it is PID 1 of an otherwise empty guest),
## built with the size-optimised `guest` profile.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile guest -p moat-agent --target $(AGENT_TARGET)

## Guest initramfs: the stripped agent as /init.
initramfs: build agent
	@mkdir -p $(BUILD)
	strip -o $(BUILD)/moat-agent $(AGENT_BIN)
	target/release/moat-rootfs initramfs --agent $(BUILD)/moat-agent --out $(BUILD)/initramfs.cpio
	target/release/moat-rootfs poweroff-initramfs --out $(BUILD)/poweroff.cpio

## The test images (OCI layouts): busybox from Debian's busybox-static, and
## netadmin (busybox + Debian's iptables) for in-pod networking tests.
images:
	scripts/build-test-image.sh $(BUILD)/images/busybox
	scripts/build-netadmin-image.sh $(BUILD)/images/netadmin

artifacts: kernel initramfs images

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything CI runs. The fuzz targets get FUZZ_TEST_SECONDS each (about 4
## minutes on 2 cores with their first build, 1 once built); `make fuzz` runs
## them longer.
FUZZ_TEST_SECONDS ?= 15
test: deps pyenv artifacts lint
	SECONDS_EACH=$(FUZZ_TEST_SECONDS) scripts/fuzz.sh
	target/release/moat-node probe
	$(CARGO) test --release --workspace

## cargo-fuzz targets of the VMM's guest-facing parsers (fuzz/), FUZZ_SECONDS
## each; corpora are kept in build/fuzz/corpus, crashes in build/fuzz/artifacts.
FUZZ_SECONDS ?= 600
fuzz:
	SECONDS_EACH=$(FUZZ_SECONDS) scripts/fuzz.sh

## Boot a pod microVM to its agent and talk to it.
demo: deps artifacts
	scripts/demo.sh

## Boot-time benchmark: moat-vmm against QEMU microvm, same kernel, same run.
bench-boot: deps artifacts
	scripts/bench-boot.sh

## Streaming benchmark: exec through the streaming server vs ExecSync,
## port-forward throughput, moatd's memory with idle sessions; prints a table.
bench-streaming: deps artifacts
	scripts/bench-streaming.sh

## Pod benchmark: a native pod against a microVM pod (start-up, memory);
## prints a table.
bench-pods: deps artifacts
	scripts/bench-pods.sh

## Volume benchmark: guest tmpfs, a virtio-fs volume, a virtio-blk volume
## and the host directly (throughput, small files), and how soon a
## configmap update shows in the guest; prints a table.
bench-volumes: deps artifacts
	scripts/bench-volumes.sh

## The test node's failure rate: NODES nodes in a row, each running the boot
## benchmark's rounds and PODS pods at once through moatd; prints a table.
## The node's settings come from MOAT_NODE_* (`moat-node stress --help`).
NODES  ?= 4
ROUNDS ?= 3
PODS   ?= 3
node-stress: deps artifacts
	target/release/moat-node stress --nodes $(NODES) --rounds $(ROUNDS) --pods $(PODS)

clean:
	rm -rf $(BUILD) fuzz/target
	$(CARGO) clean
