#!/usr/bin/env bash
# System programs some tests use as real peers: softflowd (NetFlow exporter), Chromium (dashboard
# browser test), PostgreSQL (store backend), nft (checks the generated nftables rulesets). Installed from Debian's packages when missing and
# when running as root with apt-get; otherwise the tests that need them skip and say why.
set -uo pipefail
need=()
command -v softflowd >/dev/null 2>&1 || need+=(softflowd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v nft >/dev/null 2>&1 || need+=(nftables)
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "ci_system_deps: softflowd, chromium, nft and postgresql present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci_system_deps: cannot install ${need[*]} (not root or no apt-get); their tests will skip"
  exit 0
fi
echo "ci_system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/ci_system_deps.log 2>&1; then
  echo "ci_system_deps: apt-get failed (see /tmp/ci_system_deps.log); tests needing ${need[*]} will skip"
fi
exit 0
