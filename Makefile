# imds-agent. `make test` is the whole test suite; `make build` the binary.
VERSION ?= $(shell git describe --tags --match 'v*' 2>/dev/null | sed 's/^v//' || true)
ifeq ($(VERSION),)
VERSION := 0.0.0~dev$(shell TZ=UTC git log -1 --format=%cd.%h --date=format-local:%Y%m%d%H%M%S 2>/dev/null)
endif
# The commit built, marked -dirty when tracked files differ from it.
COMMIT ?= $(shell c=$$(git rev-parse --short HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null || c=$$c-dirty; } && echo $$c)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build test dev
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/imds-agent ./cmd/imds-agent

test:
	./scripts/test.sh

dev:
	go run ./cmd/imds-agent dev

# .deb and .rpm packages for each of PKG_ARCHES, written to dist/ by the
# packaging program (packaging/, a Go module of its own). VERSION=x.y.z
# overrides the version taken from git.
PKG_ARCHES ?= amd64 arm64
PKG_DATE ?= $(shell git log -1 --format=%ct 2>/dev/null)

.PHONY: packages
packages:
	rm -rf dist/build dist/imds-agent_*.deb dist/imds-agent-*.rpm
	pkgversion=$$(cd packaging && go run . -print-version -version '$(VERSION)') || exit 1; \
	for arch in $(PKG_ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -ldflags "-s -w -X main.version=$$pkgversion -X main.commit=$(COMMIT)" -o dist/build/linux_$$arch/imds-agent ./cmd/imds-agent || exit 1; \
	done
	cd packaging && go run . -root .. -version '$(VERSION)' -commit '$(COMMIT)' -date '$(or $(PKG_DATE),0)' \
		-bindir ../dist/build -out ../dist -arch '$(PKG_ARCHES)'
