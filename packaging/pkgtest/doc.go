// Package pkgtest tests the built packages as an operator meets them:
// lintian and rpmlint (run unprivileged), the .rpm's header, payload and
// scriptlets, an install into a scratch root with rpm --root, and the whole
// .deb lifecycle (install, upgrade over an edited config, remove, purge) on
// this machine with service starts refused by policy-rc.d. Its tests are
// all in _test files; scripts/test-packages.sh runs them.
package pkgtest
