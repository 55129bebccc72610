#!/usr/bin/env bash
# Runs the whole test suite: vet, staticcheck, and every test with the race
# detector. On a fresh machine it first installs what the tests need.
# Safe to run as root: every test keeps its traffic on loopback or inside
# network namespaces it creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."

# The machine image's Python (boto3, the AWS CLI, moto) lives under pyenv.
for d in "$HOME/.pyenv/shims" /root/.pyenv/shims; do
	[[ -d $d ]] && PATH="$d:$PATH"
done
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH)/bin"

# Nothing the tests start may reach a real metadata service or a proxy.
export AWS_EC2_METADATA_DISABLED=true NO_PROXY='*' no_proxy='*'
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy

apt_missing=()
python3 -c 'import boto3' 2>/dev/null || apt_missing+=(python3-boto3)
command -v aws >/dev/null || apt_missing+=(awscli)
command -v moto_server >/dev/null || apt_missing+=(python3-moto)
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
if ((${#apt_missing[@]})); then
	echo "installing: ${apt_missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

if ! command -v staticcheck >/dev/null; then
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

echo "== gofmt"
unformatted=$(gofmt -l cmd internal test systemd packaging $(ls -d bench 2>/dev/null))
if [[ -n $unformatted ]]; then
	echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== go test -race"
go test -race -count=1 -timeout 30m ./...
echo "== tests that -race blinds, run again without it: allocations, and sync.Pool (which drops items at random under -race)"
go test -count=1 -run 'Allocations|TestReleaseFreesPooledBuffers' ./...
echo "== packages"
./scripts/test-packages.sh
