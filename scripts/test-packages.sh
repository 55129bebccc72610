#!/usr/bin/env bash
# Builds the .deb and .rpm packages with `make packages` and tests them:
# the unit (systemd-analyze verify and security), lintian and rpmlint (run as
# the user nobody), the .rpm's header, scriptlets and an install into a
# scratch root, and the whole .deb lifecycle on this machine (install,
# upgrade, remove, purge) with service starts refused by policy-rc.d and
# dpkg run in a network namespace of its own; the package and its user are
# purged at the end, even on failure. The agent itself is never run.
# On a fresh Debian machine it installs what it needs first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

missing=()
for tool in lintian:lintian rpm:rpm rpmlint:rpmlint rpm2cpio:rpm2cpio cpio:cpio \
	systemd-analyze:systemd unshare:util-linux setpriv:util-linux dpkg-deb:dpkg; do
	command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# The .deb depends on procps (/bin/kill, the unit's ExecReload): dpkg -i in
# TestDebLifecycle refuses to configure it without.
[[ -x /bin/kill ]] || missing+=(procps)
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "test-packages: missing ${missing[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "installing: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== make packages"
start=$SECONDS
# A version in git describe's form, as four commits after a tag: the
# packages must turn it into 1.2.3+4.g0123abc, and the binaries must say so.
timeout 20m make packages VERSION=1.2.3-4-g0123abc
ls -l dist/*.deb dist/*.rpm
echo "(built in $((SECONDS - start)) s)"

echo "== the unit: systemd-analyze verify and security"
timeout 5m go test -count=1 -v -run '^TestUnit' ./systemd/

echo "== packaging module: vet and tests"
cd packaging
go vet ./...
if command -v staticcheck >/dev/null; then staticcheck ./...; fi
# A go test that times out panics without running its cleanups. What
# TestDebLifecycle did to this machine is undone here then: the package
# purged (while service starts are still refused) and the policy-rc.d it
# put in place replaced by the one it set aside, if any.
undo_deb_test() {
	local policy=/usr/sbin/policy-rc.d
	grep -qs 'imds-agent package test' "$policy" || return 0
	echo "test-packages: undoing what an unfinished TestDebLifecycle left" >&2
	if dpkg-query -W -f='${Status}' imds-agent 2>/dev/null | grep -q installed; then
		DEBIAN_FRONTEND=noninteractive unshare --net -- dpkg --purge imds-agent >&2 || true
	fi
	rm -f "$policy"
	if [[ -e $policy.imds-agent-test ]]; then mv "$policy.imds-agent-test" "$policy"; fi
}
trap undo_deb_test EXIT
PKGTEST_DIST="$PWD/../dist" PKGTEST_VERSION=1.2.3+4.g0123abc-1 timeout 30m go test -count=1 -timeout 25m -v ./...
