# Shared helpers for the project's scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# Paths: tools go under .tools/ (git-ignored), runtime state (databases, broker data, logs) under .local/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$ROOT/.tools"
LOCAL_DIR="${FINTECH_LOCAL_DIR:-$ROOT/.local}"
VENV="$TOOLS_DIR/venv"
NODE_BIN="$ROOT/tools/node_modules/.bin"
export PATH="$NODE_BIN:$VENV/bin:$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A CI run builds once from a clean clone and never again: incremental compilation would only
# add its caches (~6 GB of target/debug/incremental) to the disk the run needs.
if [ "${CI:-}" = true ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
  export CARGO_INCREMENTAL=0
fi
