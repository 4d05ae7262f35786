# kube-on-air: one libvirt/KVM host -> one kubeadm cluster, as a Pulumi stack.
#   make up     set everything up and run `pulumi up` on the stack (default: air)
#   make test   lint, type-check and run the tests under Pulumi's mock runtime
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

STACK ?= air
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE_DIR := $(CURDIR)/.pulumi-state
PASSPHRASE_FILE := $(STATE_DIR)/passphrase
SSH_KEY ?= $(HOME)/.ssh/kube-on-air_ed25519
# Local file backend and a generated passphrase: no Pulumi account needed.
export PULUMI_BACKEND_URL := file://$(STATE_DIR)
export PULUMI_CONFIG_PASSPHRASE_FILE := $(PASSPHRASE_FILE)
export PULUMI_SKIP_UPDATE_CHECK := true
PULUMI_ENV := PULUMI_BACKEND_URL PULUMI_CONFIG_PASSPHRASE_FILE PULUMI_SKIP_UPDATE_CHECK
# A built toolchain (pulumi + provider plugins, for offline hosts) wins over ~/.pulumi.
TOOLCHAIN_DIR ?= $(HOME)/.cache/kube-on-air/toolchain/current
ifneq ($(wildcard $(TOOLCHAIN_DIR)/bin/pulumi),)
PULUMI_BIN := $(TOOLCHAIN_DIR)/bin
export PULUMI_HOME := $(TOOLCHAIN_DIR)/pulumi-home
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION := true
PULUMI_ENV += PULUMI_HOME PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION
else
PULUMI_BIN := $(HOME)/.pulumi/bin
endif
export PATH := $(PULUMI_BIN):$(PATH)
PULUMI_UNREACHABLE := no pulumi on PATH and https://get.pulumi.com cannot be reached; \
  install the Pulumi CLI yourself (https://www.pulumi.com/docs/install/) and put it on PATH, \
  or on an offline host build it with: make toolchain

# What `make test` runs outside the venv, as CHECK=Debian package (see tests/system-deps.sh).
TEST_SYSTEM_DEPS := py:ensurepip=python3-venv ssh-keygen=openssh-client cloud-init=cloud-init virsh=libvirt-clients haproxy=haproxy keepalived=keepalived

.PHONY: help up preview destroy clean ls kubeconfig env test test-deps test-vm lint render bench image plugins deps dev-deps pulumi-cli stack toolchain release test-toolchain e2e conformance e2e-lifecycle timeline
# Prerequisites run in the order written: the system tool check before anything is installed.
.NOTPARALLEL:

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.deps
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

deps: $(VENV)/.deps ## the program's Python dependencies in .venv (targets that need them run this first)
dev-deps: $(VENV)/.dev-deps ## deps plus the test and lint tools (pytest, ruff, mypy, ...) in .venv

pulumi-cli: ## install the Pulumi CLI into ~/.pulumi unless a pulumi is on PATH or in TOOLCHAIN_DIR
	@command -v pulumi >/dev/null || { \
	  installer=$$(curl -fsSL --connect-timeout 15 https://get.pulumi.com 2>/dev/null) && sh -c "$$installer"; \
	} || { echo '$(PULUMI_UNREACHABLE)' >&2; exit 1; }

$(PASSPHRASE_FILE):
	mkdir -p $(STATE_DIR)
	umask 077 && head -c 32 /dev/urandom | base64 > $@

$(SSH_KEY):
	mkdir -p $(dir $@)
	ssh-keygen -q -t ed25519 -N '' -C kube-on-air -f $@

stack: deps pulumi-cli $(PASSPHRASE_FILE) $(SSH_KEY) ## create or select STACK (then `pulumi config set` works)
	pulumi stack select --create $(STACK)

env: ## export lines for your shell, so pulumi there is make's: eval "$(make -s env)"
	@# Exports of a CLI or passphrase file that do not exist would only fail later, in your shell.
	@missing=; command -v pulumi >/dev/null || missing="no pulumi in $(PULUMI_BIN) or on PATH"; \
	  test -f '$(PASSPHRASE_FILE)' || missing="$${missing:+$$missing and }no passphrase file $(PASSPHRASE_FILE)"; \
	  [[ -z $$missing ]] || { echo "make env: $$missing; run make stack first (it makes both)" >&2; exit 1; }
	@for name in $(PULUMI_ENV); do printf 'export %s=%q\n' "$$name" "$${!name}"; done
	@if [[ -x '$(PULUMI_BIN)/pulumi' ]]; then printf 'export PATH=%q:"$$PATH"\n' '$(PULUMI_BIN)'; fi

up: stack ## set everything up and run `pulumi up` on STACK (default air)
	pulumi up --stack $(STACK) $(ARGS)

preview: stack ## show what `pulumi up` would change
	pulumi preview --stack $(STACK) $(ARGS)

destroy: stack ## drain, reset and delete every node, the network and the pool
	pulumi destroy --stack $(STACK) $(ARGS)

clean: destroy ## the seed's `make clean`: same as destroy

ls: pulumi-cli ## nodes, addresses and SSH commands of STACK (the seed's `make ls`)
	pulumi stack output --stack $(STACK) nodes
	pulumi stack output --stack $(STACK) sshCommands

kubeconfig: pulumi-cli ## write the admin kubeconfig of STACK to build/STACK/kubeconfig (mode 0600)
	mkdir -p build/$(STACK)
	@# Written beside the target (mktemp: mode 0600) and renamed only once read: a failure keeps the old one.
	tmp=$$(mktemp build/$(STACK)/.kubeconfig.XXXXXX) && trap 'rm -f "$$tmp"' EXIT && \
	  pulumi stack output --stack $(STACK) --show-secrets kubeconfig > "$$tmp" && test -s "$$tmp" && \
	  mv "$$tmp" build/$(STACK)/kubeconfig
	@echo "export KUBECONFIG=$(CURDIR)/build/$(STACK)/kubeconfig"

lint: dev-deps ## ruff and mypy (strict) against the SDK types
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy __main__.py components tools tests

test: test-deps lint ## lint, type-check, then all tests except the VM boot
	$(PY) -m pytest -q

test-deps: ## install the system tools `make test` needs with apt (as root or with sudo -n), or name them and stop
	@PYTHON=$(PYTHON) tests/system-deps.sh test $(TEST_SYSTEM_DEPS)

test-vm: dev-deps ## boot a real node VM from the program's own cloud-init (slow)
	$(PY) -m pytest -q -m vm tests/vm

render: dev-deps $(SSH_KEY) ## write every artifact of STACK into build/STACK (no Pulumi CLI needed)
	$(PY) -m tools.render --stack $(STACK) $(ARGS)

K8S_VERSION = $(shell awk '/kube-on-air:kubernetesVersion:/ {print $$2}' Pulumi.$(STACK).yaml)
# What an offline host takes from directories its user fills (docs/offline.md).
OFFLINE_DIR ?= $(HOME)/.cache/kube-on-air/offline
PLUGIN_DIR ?= $(OFFLINE_DIR)/plugins
IMAGE_DIR ?= $(OFFLINE_DIR)/images
# With a built toolchain the node image is made offline from it (and IMAGE_DIR); otherwise from pkgs.k8s.io and registry.k8s.io.
IMAGE_SOURCE := $(if $(wildcard $(TOOLCHAIN_DIR)/pieces/images/images.txt),KOA_TOOLCHAIN=$(TOOLCHAIN_DIR) KOA_IMAGE_DIR=$(IMAGE_DIR))
# debootstrap and chroot need root: sudo only when make is not already root.
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)
image: deps ## node image with containerd, the pinned Kubernetes binaries and every image STACK runs (toolchain + IMAGE_DIR, or pkgs.k8s.io)
	$(AS_ROOT) KOA_KUBERNETES_VERSION=$(K8S_VERSION) $(IMAGE_SOURCE) KOA_REQUIRED_IMAGES="$$($(PY) -m tools.offline images $(STACK) | tr '\n' ' ')" \
	  KOA_IMAGE_OUT=$(CURDIR)/build/node-image.qcow2 tools/build-image.sh
	@echo "pulumi config set --stack $(STACK) kube-on-air:imageSource $(CURDIR)/build/node-image.qcow2"
	@echo "pulumi config set --stack $(STACK) kube-on-air:prebaked true"

plugins: deps ## register the libvirt and command plugins and the Python language host from PLUGIN_DIR into the toolchain
	$(PY) -m tools.offline plugins $(PLUGIN_DIR)

timeline: kubeconfig ## draw where STACK's `up` that built it spent its time: build/STACK/timeline.svg (+ .json)
	$(PY) -m tools.timeline --stack $(STACK) --kubeconfig build/$(STACK)/kubeconfig --out build/$(STACK)/timeline.svg

bench: dev-deps $(SSH_KEY) ## evaluation time and dependency chain for 1+3, 1+30, 1+100 workers
	$(PY) -m tools.bench

toolchain: deps ## build the Pulumi CLI, provider plugins, Kubernetes and its images from the Go module proxy (cached)
	$(PY) -m tools.toolchain

release: deps ## build another Kubernetes release (VERSION=1.34.4) for an offline upgrade, beside the toolchain
	@test -n "$(VERSION)" || { echo "make release: name the version, e.g. make release VERSION=1.34.4" >&2; exit 1; }
	$(PY) -m tools.releases $(VERSION) --toolchain $(TOOLCHAIN_DIR)

test-toolchain: dev-deps ## the built kubeadm validates every rendered config; pulumi and plugins at the pinned versions
	$(PY) -m pytest -q -m toolchain tests/toolchain

E2E_SELECT ?= e2e and not lifecycle and not conformance
e2e: dev-deps ## a real `pulumi up` of the e2e stack: the cluster's checks, a second up without changes, destroy (root; ~30 min under emulation)
	@$(PY) -m tools.offline status e2e --image-dir $(IMAGE_DIR) || { echo "make e2e: build and register what is missing first (docs/offline.md, docs/testing.md)" >&2; exit 1; }
	$(MAKE) --no-print-directory image STACK=e2e
	$(PY) -m pytest -q -m "$(E2E_SELECT)" -p no:cacheprovider tests/e2e

conformance: ## make e2e with upstream's conformance focus (tools/conformance.py) run on the live cluster before the second up
	$(MAKE) --no-print-directory e2e E2E_SELECT="e2e and not lifecycle"

e2e-lifecycle: ## make e2e plus the conformance focus, scaling, resizes, upgrades 1.34.2 -> 1.34.4 -> 1.35.4, a worker rebuilt, a VM deleted by hand, keepBaseImage across destroy, an up killed in kubeadm init
	$(MAKE) --no-print-directory release VERSION=1.34.4
	$(MAKE) --no-print-directory release VERSION=1.35.4
	$(MAKE) --no-print-directory e2e E2E_SELECT=e2e
