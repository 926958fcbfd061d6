#!/usr/bin/env bash
# The whole test suite: build, lint, unit and integration tests. Long soaks and benchmarks are
# separate (scripts/bench.sh). Installs what the tests need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E 'clippy|rustfmt' || true

echo "== format"
cargo fmt --all -- --check

echo "== build (release: the integration tests run the real binaries)"
cargo build --release --workspace --all-targets

echo "== clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== SPDK's client for the integration tests (tests/ drive pcache_tgt with spdk-rpc)"
./scripts/setup-venv.sh
# Without the client those tests skip loudly; here that is a failure instead.
export PCACHE_REQUIRE_SPDK_RPC=1

echo "== tests"
cargo test --release --workspace -- --test-threads=2

# The Linux kernel's own NVMe/TCP initiator against pcache_tgt, in a QEMU (TCG) guest; setup.sh
# installs QEMU and builds the guest from Debian's packages. PCACHE_SKIP_LINUX=1 skips it.
if [ "${PCACHE_SKIP_LINUX:-0}" = 1 ]; then
    echo "== Linux NVMe/TCP initiator: skipped (PCACHE_SKIP_LINUX=1)"
else
    echo "== Linux NVMe/TCP initiator (QEMU guest)"
    PCACHE_NVMF_NO_BUILD=1 bash tests/linux/nvmf.sh
fi

echo "== all tests passed"
