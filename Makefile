# weft — the two commands a new user needs are `make demo` and `make test`.
# Both install the host packages they need (as root) and build first.

CARGO ?= cargo
WEFT  := target/debug/weft
# Host tools: nft (the data plane's one host tool), nsenter (tests, util-linux),
# tcpdump (tests check packets on the underlay), iproute2 (tests read the kernel independently),
# containerd (with ctr and its runc shim) and runc (issue #14: tasks as OCI containers),
# umoci and skopeo (the image tests build their busybox image offline with them; skopeo
# also pushes it), docker-registry (Distribution's registry: the pull tests run their own),
# podman and conmon (issue #15: podman's containers on weft networks through the CNI plugin),
# dockerd from docker.io (issue #15: Docker's containers through weft's network plugin),
# chromium (issue #19: the tests drive `weft ui`'s page in a headless browser).
HOST_TOOLS := nft:nftables nsenter:util-linux tcpdump:tcpdump ip:iproute2 containerd:containerd runc:runc umoci:umoci skopeo:skopeo docker-registry:docker-registry podman:podman conmon:conmon dockerd:docker.io chromium:chromium
# Packages checked by name, not by command: busybox-static (tests' busybox, and the only binary
# of the test image, so it must be static) is told apart from an unowned or dynamic busybox
# that would also answer `command -v busybox`. It replaces Debian's `busybox` package.
HOST_PACKAGES := busybox-static

.PHONY: all build deps demo demo-down test test-unit lint check-deps bench clean deb

all: build

deps:
	@missing=""; for t in $(HOST_TOOLS); do \
	  bin=$${t%%:*}; pkg=$${t##*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	for pkg in $(HOST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing host packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root (weft manages network namespaces), or install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build:
	$(CARGO) build --workspace --all-targets

demo: deps build
	@bash deploy/lab/demo.sh $(WEFT)

demo-down:
	-$(WEFT) lab down demo --force

test: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "error: the end-to-end tests need root (network namespaces)" >&2; exit 1; fi
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-deps:
	@bash deploy/check-deps.sh

# The Debian package (issue #20): target/deb/weft_<version>_<arch>.deb from a
# release build; deploy/deb/ says what is in it.
deb:
	$(CARGO) build --release -p weft -p weft-worker --bins
	@bash deploy/deb/build.sh

bench: deps
	@bash bench/run.sh
	@bash bench/overlay.sh
	@bash bench/wg.sh
	@bash bench/containers.sh
	@bash bench/cni.sh
	@bash bench/nodes.sh
	@bash bench/idle.sh

clean:
	$(CARGO) clean

# The fault suite (issue #13): the linearizability checker's own tests, then
# the end-to-end fault tests, the nemesis with 4 rounds of every fault against
# 3 and against 5 managers (WEFT_FAULTS_ROUNDS=N for more; tables of figures on
# stderr), then DNS and encrypted flows across 5 rounds of daemon restarts and
# upgrades (medians on stdout). One test at a time: they measure recovery times.
.PHONY: faults
faults: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "error: the fault suite needs root (network namespaces)" >&2; exit 1; fi
	$(CARGO) test -p weft-faults
	WEFT_FAULTS_FULL=1 $(CARGO) test --test nemesis --test faults -- --nocapture --test-threads=1
	WEFT_RESTART_ROUNDS=5 $(CARGO) test --test dns_restart --test restart -- --nocapture --test-threads=1

# The VM rig (issue #20, deploy/vm/): QEMU guests of a small Debian 12 image
# (TCG emulation unless WEFT_VM_ACCEL=kvm). Not part of `make test`. They put
# target/debug/weft (or WEFT_VM_BINARY) into the guests; they do not build it.
.PHONY: vm-deps vm-image vm-rig vm-rig-down vm-test vm-deb-test vm-rig-test vagrant-deps vagrant-box vagrant-test
vm-deps:
	@bash deploy/vm/deps.sh

# Cached in target/vm/image; rebuilt only when deploy/vm or the unit changes.
vm-image: vm-deps
	@bash deploy/vm/image.sh

# 3 managers + 2 workers (WEFT_VM_MANAGERS, WEFT_VM_WORKERS), left running.
vm-rig: vm-image
	@bash deploy/vm/rig.sh up

vm-rig-down:
	@bash deploy/vm/rig.sh down

# One guest: container limits on a real cgroup v2 (PASS/FAIL table).
vm-test: vm-image
	@bash deploy/vm/test.sh

# The Debian package on one guest: install, init, upgrade, remove, purge
# (packed from the debug build, or WEFT_DEB_BIN_DIR).
vm-deb-test: vm-image
	@bash deploy/vm/deb-test.sh

# Five guests from the .deb: cluster through systemd, an encrypted service
# reached by name, a worker and the leader rebooted, a rolling upgrade under
# load (deploy/vm/rig-test.sh; about 25 minutes under TCG).
vm-rig-test: vm-image
	@bash deploy/vm/rig-test.sh

# Vagrant with libvirt (deploy/vagrant/): the box weft/debian12 from the VM
# rig's image (target/vm/vagrant/weft-debian12.box, added to Vagrant), and
# a test that runs `vagrant up --provider=libvirt` of the five-node rig
# against a libvirtd of its own in namespaces, then destroys it.
vagrant-deps: vm-deps
	@WEFT_VM_VAGRANT=1 bash deploy/vm/deps.sh

vagrant-box: vagrant-deps
	@bash deploy/vm/box.sh

vagrant-test: vagrant-deps
	@WEFT_BOX_ADD=0 bash deploy/vm/box.sh
	@bash deploy/vm/vagrant-test.sh
