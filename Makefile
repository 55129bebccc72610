# imds-agent. `make test` is the whole test suite; `make build` the binary.
VERSION ?= $(shell git describe --tags --match 'v*' 2>/dev/null | sed 's/^v//' || true)
ifeq ($(VERSION),)
VERSION := 0.0.0~dev$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null)
endif
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build test dev
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/imds-agent ./cmd/imds-agent

test:
	./scripts/test.sh

dev:
	go run ./cmd/imds-agent dev
