#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing, then runs everything.
# Nothing is skipped: a dependency that cannot be installed fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive besides the Rust toolchain, as "command:package". None yet for
# the proxy core; the identity-provider and browser tests add node and chromium here.
need_apt=()
for pair in; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test (unit, integration against the real binary, benches in test mode)"
cargo test --all-targets
