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

echo "== tests"
cargo test --release --workspace -- --test-threads=2

echo "== all tests passed"
