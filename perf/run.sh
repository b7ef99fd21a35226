#!/usr/bin/env bash
# Whole-proxy benchmark: Portcullis against nginx and HAProxy, all in front of
# the same fast upstream, measured with wrk in alternating rounds.
#
#   perf/run.sh                      # defaults: ROUNDS=5 DURATION=10 (seconds)
#   ROUNDS=3 DURATION=5 perf/run.sh
#   PORTCULLIS_BIN=/path/to/portcullis perf/run.sh   # skip cargo build
#   PERF_TARGETS="nginx haproxy" perf/run.sh        # only some targets
#   RSS_STEP=0 perf/run.sh           # skip the memory step (perf/rss.sh) after the rounds
#   PERF_TARGETS="portcullis-uring portcullis-session portcullis-cookie" perf/run.sh   # the session targets
#   UPSTREAM=nginx perf/run.sh       # Debian nginx as the upstream instead of perf/upstream
#   PERF_TARGETS="nginx-https portcullis-https nginx-tls-full portcullis-tls-full nginx-tls-resume portcullis-tls-resume" RSS_STEP=0 perf/run.sh   # TLS
#   PERF_TARGETS="portcullis-uring portcullis-etcd" RSS_STEP=0 perf/run.sh   # routes from etcd, and etcd write to first request
#
# See perf/README.md. Output: a Markdown report on stdout and in
# perf/out/latest.md; raw numbers and every process's log in perf/out/.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$PERF_DIR/.." && pwd)
OUT_DIR=$PERF_DIR/out
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# ---------------------------------------------------------------- settings
ROUNDS=${ROUNDS:-5}                 # alternating rounds over all targets
DURATION=${DURATION:-10}            # seconds per measured wrk run
WARMUP=${WARMUP:-3}                 # seconds of warm-up per target, before round 1
CONNECTIONS=${CONNECTIONS:-50}      # wrk -c
THREADS=${THREADS:-1}               # wrk -t
PROXY_CPU=${PROXY_CPU:-0}           # core for the proxies under test
LOAD_CPU=${LOAD_CPU:-1}             # core for wrk and the upstream
PORT_BASE=${PERF_PORT_BASE:-18080}  # first port tried; busy ports are skipped
BASELINE=${BASELINE:-nginx}         # target the ratios are computed against
PERF_TARGETS=${PERF_TARGETS:-}      # space-separated subset of targets; empty = all
READY_TIMEOUT=${READY_TIMEOUT:-30}  # seconds a server gets to answer 200
PORTCULLIS_RUST_LOG=${PORTCULLIS_RUST_LOG:-warn}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-}
TOKEN_POOL=${TOKEN_POOL:-1000}      # distinct tokens the bearer-token targets rotate over
RSS_STEP=${RSS_STEP:-1}             # 1: run perf/rss.sh after the rounds (needs a portcullis target)
NODE=${NODE:-node}                  # mints tokens, runs the fake introspection endpoint and OpenID provider
UPSTREAM=${UPSTREAM:-fast}          # fast: perf/upstream (built here); nginx: Debian nginx
UPSTREAM_BIN=$PERF_DIR/upstream/target/release/perf-upstream
S_TIME_PROCS=${S_TIME_PROCS:-8}     # parallel `openssl s_time -new` clients of the full-handshake targets
ETCD_CHANGES=${ETCD_CHANGES:-100}   # etcd writes timed to their first served request (with portcullis-etcd)

[[ $UPSTREAM == fast || $UPSTREAM == nginx ]] || { echo "run.sh: UPSTREAM must be fast or nginx (got '$UPSTREAM')" >&2; exit 2; }
for v in ROUNDS DURATION WARMUP CONNECTIONS THREADS PORT_BASE READY_TIMEOUT TOKEN_POOL RSS_STEP S_TIME_PROCS ETCD_CHANGES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "run.sh: $v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
((ROUNDS >= 1 && DURATION >= 1)) || { echo "run.sh: ROUNDS and DURATION must be >= 1" >&2; exit 2; }
((TOKEN_POOL >= 1)) || { echo "run.sh: TOKEN_POOL must be >= 1" >&2; exit 2; }

log() { printf '[perf %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[perf] FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes
WORK=""          # temp dir for configs, logs and data
PIDS=()          # every long-running process this script started
PID_NAMES=()

# shellcheck source=perf/procs.sh
source "$PERF_DIR/procs.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_sampler
    if stop_all_keeping_logs "$OUT_DIR/logs" && ((rc != 0)); then
        log "logs of every process and wrk run are in $OUT_DIR/logs/"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_ready NAME URL PID [curl args...] — poll until URL answers 200 with the
# upstream's body; fail loudly if the process dies or it never does.
EXPECTED_BODY="hello world"
wait_ready() {
    local name=$1 url=$2 pid=$3 deadline code body
    shift 3
    deadline=$((SECONDS + READY_TIMEOUT))
    code=none
    while ((SECONDS < deadline)); do
        if ! is_alive "$pid"; then
            tail -n 40 "$WORK/logs/$name.log" >&2 || true
            die "$name (pid $pid) exited before it answered $url (log above)"
        fi
        if code=$(curl -sS -o "$WORK/ready-body" -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null); then
            body=$(<"$WORK/ready-body")
            if [[ $code == 200 && $body == *"$EXPECTED_BODY"* ]]; then
                log "$name answers 200 at $url"
                return 0
            fi
        fi
        sleep 0.2
    done
    tail -n 40 "$WORK/logs/$name.log" >&2 || true
    die "$name did not answer 200 with the upstream's body at $url within ${READY_TIMEOUT}s (last status: ${code:-none}, body: $(head -c 300 "$WORK/ready-body" 2>/dev/null | tr '\n' ' '))"
}

# expect_status NAME WHAT URL STATUS [curl args...] — one request must answer STATUS (and, for
# 200, the upstream's body); fail loudly otherwise. WHAT says what was sent, for the log.
expect_status() {
    local name=$1 what=$2 url=$3 want=$4 code body
    shift 4
    code=$(curl -sS -o "$WORK/check-body" -w '%{http_code}' --max-time 5 "$@" "$url" 2>"$WORK/check-err") ||
        code="none (curl: $(head -c 200 "$WORK/check-err"))"
    body=$(head -c 300 "$WORK/check-body" 2>/dev/null | tr '\n' ' ')
    [[ $code == "$want" ]] || die "$name answered $code instead of $want to a request with $what at $url (body: $body)"
    [[ $want != 200 || $body == *"$EXPECTED_BODY"* ]] || die "$name answered 200 without the upstream's body to a request with $what (body: $body)"
    log "$name answers $want to a request with $what"
}

# wait_listening NAME PORT PID — poll until something accepts connections on 127.0.0.1:PORT.
wait_listening() {
    local name=$1 port=$2 pid=$3 deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        is_alive "$pid" || { tail -n 40 "$WORK/logs/$name.log" >&2 || true; die "$name (pid $pid) exited before it listened on port $port (log above)"; }
        port_busy "$port" && { log "$name listens on 127.0.0.1:$port"; return 0; }
        sleep 0.2
    done
    die "$name did not listen on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}

# ---------------------------------------------------------------- setup
ensure_tools() {
    local missing=() pair bin pkg
    local -a tools=(nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl taskset:util-linux openssl:openssl)
    # node mints the token pools and runs the fake introspection endpoint and OpenID provider.
    if needs_node; then
        if [[ $NODE == node ]]; then
            tools+=(node:nodejs)
        else
            command -v "$NODE" >/dev/null 2>&1 || die "NODE=$NODE not found"
        fi
    fi
    # etcd holds portcullis-etcd's routes; python3 times etcd writes to their first request.
    [[ " ${SELECTED[*]} " != *" portcullis-etcd "* ]] || tools+=(etcd:etcd-server python3:python3)
    for pair in "${tools[@]}"; do
        bin=${pair%%:*}
        pkg=${pair#*:}
        command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing missing packages: ${missing[*]}"
    apt-get update || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" ||
        die "apt-get install -y ${missing[*]} failed"
    for pair in "${tools[@]}"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} still missing after installing ${pair#*:}"
    done
}

upstream_desc() {
    if [[ $UPSTREAM == fast ]]; then
        echo "perf/upstream: io_uring, finds each head's end and answers from a static buffer"
    else
        # Single quotes: the backticks are Markdown, not a command substitution.
        echo 'Debian nginx, `return 200`'
    fi
}

UPSTREAM_ADDR=""
start_upstream() {
    local dir=$WORK/upstream
    mkdir -p "$dir"
    alloc_port
    UPSTREAM_ADDR=127.0.0.1:$PORT
    if [[ $UPSTREAM == fast ]]; then
        start_pinned upstream "$LOAD_CPU" "$UPSTREAM_BIN" "$UPSTREAM_ADDR"
    else
        render "$PERF_DIR/conf/nginx-upstream.conf.tmpl" "$dir/nginx.conf" DIR="$dir" PORT="$PORT"
        nginx -t -q -p "$dir" -c "$dir/nginx.conf" >"$WORK/logs/upstream-config-test.log" 2>&1 ||
            { cat "$WORK/logs/upstream-config-test.log" >&2; die "upstream nginx config test failed"; }
        start_pinned upstream "$LOAD_CPU" nginx -p "$dir" -c "$dir/nginx.conf"
    fi
    wait_ready upstream "http://$UPSTREAM_ADDR/" "$LAST_PID"
}

# ---------------------------------------------------------------- targets
# Each target: a name, a starter function, and extra wrk args (e.g. -s script.lua).
# A starter is called as `STARTER NAME`; it starts whatever the target needs,
# waits until it answers (wait_ready, which takes curl args such as -H for
# targets that need credentials), and sets TARGET_URL[NAME].
ALL_TARGETS=()
declare -A TARGET_STARTER=() TARGET_WRK=() TARGET_URL=() TARGET_PROBE=() TARGET_NODE=() TARGET_CHECK=()
# TARGET_TOOL[NAME]=s_time: NAME is loaded by parallel `openssl s_time -new` clients (full TLS
# handshakes, one request each) instead of wrk.
declare -A TARGET_TOOL=()
SKIPPED_NOTES=()   # targets left out of the default selection, and why (for the report)

# add_target NAME STARTER [extra wrk args...]
add_target() {
    local name=$1 starter=$2
    shift 2
    ALL_TARGETS+=("$name")
    TARGET_STARTER[$name]=$starter
    TARGET_WRK[$name]=$( (($# == 0)) || printf '%q ' "$@")
}

# use_token_pool NAME FILE — wrk sends NAME's requests with `Authorization: Bearer <token>`,
# rotating over the tokens in FILE (perf/wrk/tokens.lua; the file goes after the URL).
use_token_pool() {
    TARGET_WRK[$1]+=$(printf '%q ' -s "$PERF_DIR/wrk/tokens.lua" -- "$2")
}

start_upstream_direct() {
    TARGET_URL[$1]="http://$UPSTREAM_ADDR/"
}

start_nginx_proxy() {
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    alloc_port
    render "$PERF_DIR/conf/nginx-proxy.conf.tmpl" "$dir/nginx.conf" DIR="$dir" PORT="$PORT" UPSTREAM="$UPSTREAM_ADDR"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" >"$WORK/logs/$name-config-test.log" 2>&1 ||
        { cat "$WORK/logs/$name-config-test.log" >&2; die "$name config test failed"; }
    start_pinned "$name" "$PROXY_CPU" nginx -p "$dir" -c "$dir/nginx.conf"
    TARGET_URL[$name]="http://127.0.0.1:$PORT/"
    wait_ready "$name" "${TARGET_URL[$name]}" "$LAST_PID"
}

# Extra KEY=VALUE placeholders for the next start_haproxy / start_portcullis template; each of
# them empties it.
TMPL_VARS=()

# start_haproxy NAME [TEMPLATE [curl args for the readiness check...]]
start_haproxy() {
    local name=$1 tmpl=${2:-$PERF_DIR/conf/haproxy.cfg.tmpl} dir=$WORK/$1
    shift $(($# < 2 ? $# : 2))
    mkdir -p "$dir"
    alloc_port
    render "$tmpl" "$dir/haproxy.cfg" PORT="$PORT" UPSTREAM="$UPSTREAM_ADDR" "${TMPL_VARS[@]}"
    TMPL_VARS=()
    haproxy -c -q -f "$dir/haproxy.cfg" >"$WORK/logs/$name-config-test.log" 2>&1 ||
        { cat "$WORK/logs/$name-config-test.log" >&2; die "$name config check failed"; }
    start_pinned "$name" "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg"
    TARGET_URL[$name]="http://127.0.0.1:$PORT/"
    wait_ready "$name" "${TARGET_URL[$name]}" "$LAST_PID" "$@"
}

# launch_portcullis NAME DRIVER [TEMPLATE] — render the config, check it, start Portcullis; sets
# TARGET_URL[NAME], LAST_PID and PORT (its listen port). The caller waits until it answers.
# Metrics are on (status.metrics) unless TMPL_VARS holds METRICS=false: TMPL_VARS come first,
# and render keeps the first value of a key.
launch_portcullis() {
    local name=$1 driver=$2 tmpl=${3:-$PERF_DIR/conf/portcullis.yaml.tmpl} dir=$WORK/$1 admin_port status_port
    mkdir -p "$dir/data"
    alloc_port
    admin_port=$PORT
    ADMIN_PORT_OF[$name]=$admin_port
    alloc_port
    status_port=$PORT
    alloc_port
    render "$tmpl" "$dir/config.yaml" "${TMPL_VARS[@]}" DIR="$dir" PORT="$PORT" ADMIN_PORT="$admin_port" \
        STATUS_PORT="$status_port" METRICS=true DRIVER="$driver" UPSTREAM="$UPSTREAM_ADDR"
    TMPL_VARS=()
    "$PORTCULLIS_BIN" -c "$dir/config.yaml" check >"$WORK/logs/$name-config-test.log" 2>&1 ||
        { cat "$WORK/logs/$name-config-test.log" >&2; die "$name: portcullis refuses its config $dir/config.yaml (above)"; }
    start_pinned "$name" "$PROXY_CPU" env RUST_LOG="$PORTCULLIS_RUST_LOG" "$PORTCULLIS_BIN" -c "$dir/config.yaml"
    TARGET_URL[$name]="http://127.0.0.1:$PORT/"
}

# start_portcullis NAME DRIVER [TEMPLATE [curl args for the readiness check...]]
start_portcullis() {
    local name=$1
    launch_portcullis "$name" "$2" "${3:-$PERF_DIR/conf/portcullis.yaml.tmpl}"
    shift $(($# < 3 ? $# : 3))
    wait_ready "$name" "${TARGET_URL[$name]}" "$LAST_PID" "$@"
}
start_portcullis_uring() { start_portcullis "$1" io_uring; }
# The same with `status.metrics: false`: what counting for /metrics costs, measured in the same run.
start_portcullis_uring_nometrics() {
    TMPL_VARS=(METRICS=false)
    start_portcullis "$1" io_uring
}
start_portcullis_epoll() { start_portcullis "$1" epoll; }

# ---- config from etcd: a private etcd (core $LOAD_CPU, idle while measuring) holds the route
ETCD_URL=""
ensure_etcd() {
    [[ -z $ETCD_URL ]] || return 0
    local client peer deadline
    alloc_port
    client=$PORT
    alloc_port
    peer=$PORT
    ETCD_URL=http://127.0.0.1:$client
    start_pinned etcd "$LOAD_CPU" etcd --name perf --data-dir "$WORK/etcd" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "perf=http://127.0.0.1:$peer" --log-level warn
    deadline=$((SECONDS + READY_TIMEOUT))
    until curl -sS --max-time 2 -o /dev/null -X POST -d '{"key":"AA=="}' "$ETCD_URL/v3/kv/range" 2>/dev/null; do
        is_alive "$LAST_PID" || die "etcd exited; see $OUT_DIR/logs/etcd.log"
        ((SECONDS < deadline)) || die "etcd did not answer on $ETCD_URL within ${READY_TIMEOUT}s"
        sleep 0.2
    done
    log "etcd answers on $ETCD_URL"
}

# etcd_put KEY VALUE — through etcd's v3 JSON gateway (keys and values base64).
etcd_put() {
    local body
    body=$(printf '{"key":"%s","value":"%s"}' "$(printf '%s' "$1" | base64 -w0)" "$(printf '%s' "$2" | base64 -w0)")
    curl -sS --fail --max-time 5 -o /dev/null -X POST -d "$body" "$ETCD_URL/v3/kv/put" || die "etcd put $1 failed"
}

# portcullis-etcd: portcullis-uring's route, read from etcd (APISIX's layout) instead of the file.
start_portcullis_etcd() {
    local name=$1 prefix=/perf-$1
    ensure_etcd
    etcd_put "$prefix/upstreams/1" "{\"id\":\"1\",\"type\":\"roundrobin\",\"nodes\":{\"$UPSTREAM_ADDR\":1}}"
    etcd_put "$prefix/routes/1" '{"id":"1","uri":"/*","upstream_id":"1"}'
    TMPL_VARS=(ETCD_URL="$ETCD_URL" ETCD_PREFIX="$prefix")
    start_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-etcd.yaml.tmpl"
}

# run_etcd_propagation_step — with portcullis-etcd selected: a second etcd-fed Portcullis (its
# own prefix, no route yet), and perf/tools/etcd-propagation.py timing ETCD_CHANGES route writes
# to their first served request; its Markdown section goes to $WORK/etcd-prop.md.
run_etcd_propagation_step() {
    [[ " ${SELECTED[*]} " == *" portcullis-etcd "* ]] || return 0
    local name=portcullis-etcd-prop
    TMPL_VARS=(ETCD_URL="$ETCD_URL" ETCD_PREFIX="/perf-prop")
    launch_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-etcd.yaml.tmpl"
    wait_listening "$name" "$PORT" "$LAST_PID"
    log "timing $ETCD_CHANGES etcd writes to their first served request"
    if taskset -c "$LOAD_CPU" python3 "$PERF_DIR/tools/etcd-propagation.py" "$ETCD_URL" /perf-prop \
        "127.0.0.1:$PORT" "$UPSTREAM_ADDR" "$ETCD_CHANGES" >"$WORK/etcd-prop.md" 2>"$WORK/logs/etcd-propagation.log"; then
        :
    else
        cat "$WORK/logs/etcd-propagation.log" >&2
        die "perf/tools/etcd-propagation.py failed (above)"
    fi
}

# ---- bearer-token targets
# Token pools are minted once per run into $WORK/tokens by perf/tools/mint-tokens.js: distinct,
# valid tokens (exp a day ahead), one per line, plus FILE.tampered (a wrong signature).
JWT_ISSUER=https://idp.perf
JWT_PRIVKEY=$REPO/tests/fixtures/rsa1.pk8.der   # RSA-2048, PKCS#8 DER
JWT_PUBKEY=$REPO/tests/fixtures/rsa1.pub.pem
JWT_POOL="" JWT_FIRST="" JWT_LAST="" JWT_TAMPERED=""
OPAQUE_POOL="" OPAQUE_FIRST="" OPAQUE_TAMPERED=""

# mint_pool FILE WHAT [mint-tokens.js args...] — mint $TOKEN_POOL tokens into FILE, check them.
mint_pool() {
    local file=$1 what=$2 t0=$SECONDS n
    shift 2
    mkdir -p "$WORK/tokens"
    "$NODE" "$PERF_DIR/tools/mint-tokens.js" --count "$TOKEN_POOL" --out "$file" "$@" >"$WORK/logs/mint-$(basename "$file").log" 2>&1 ||
        { cat "$WORK/logs/mint-$(basename "$file").log" >&2; die "minting $what failed (above)"; }
    n=$(sort -u "$file" | wc -l)
    ((n == TOKEN_POOL)) || die "minted $n distinct $what instead of $TOKEN_POOL"
    log "minted $TOKEN_POOL $what in $((SECONDS - t0)) s ($(awk '{ s += length($0) } END { printf "%.0f", s / NR }' "$file") characters each on average)"
}

ensure_jwt_pool() {
    [[ -z $JWT_POOL ]] || return 0
    [[ -r $JWT_PRIVKEY && -r $JWT_PUBKEY ]] || die "test keys missing: $JWT_PRIVKEY, $JWT_PUBKEY"
    JWT_POOL=$WORK/tokens/jwt-rs256.txt
    mint_pool "$JWT_POOL" "RS256 JWTs" --alg RS256 --key "$JWT_PRIVKEY" --iss "$JWT_ISSUER"
    JWT_FIRST=$(head -n1 "$JWT_POOL")
    JWT_LAST=$(tail -n1 "$JWT_POOL")
    JWT_TAMPERED=$(<"$JWT_POOL.tampered")
}

ensure_opaque_pool() {
    [[ -z $OPAQUE_POOL ]] || return 0
    OPAQUE_POOL=$WORK/tokens/opaque.txt
    mint_pool "$OPAQUE_POOL" "opaque tokens" --opaque
    OPAQUE_FIRST=$(head -n1 "$OPAQUE_POOL")
    OPAQUE_TAMPERED=$(<"$OPAQUE_POOL.tampered")
}

# yaml_pem FILE — a PEM file as one line with \n escapes, for a YAML double-quoted string.
yaml_pem() { awk '{ printf "%s\\n", $0 }' "$1"; }

# check_bearer_target NAME GOOD_TOKEN BAD_TOKEN WHAT_BAD — before any load: a second valid token
# answers 200, a bad one 401, none 401.
check_bearer_target() {
    local name=$1 url=${TARGET_URL[$1]}
    expect_status "$name" "another valid token of the pool" "$url" 200 -H "Authorization: Bearer $2"
    expect_status "$name" "$4" "$url" 401 -H "Authorization: Bearer $3"
    expect_status "$name" "no token" "$url" 401
}

# start_portcullis_jwt NAME PER_CORE_LINE [METRICS] — Portcullis (io_uring) with the public_key
# route; METRICS (default true) is status.metrics.
start_portcullis_jwt() {
    local name=$1
    ensure_jwt_pool
    TMPL_VARS=(PUBLIC_KEY="$(yaml_pem "$JWT_PUBKEY")" ALG=RS256 ISSUER="$JWT_ISSUER" PER_CORE="$2" METRICS="${3:-true}")
    start_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-jwt.yaml.tmpl" -H "Authorization: Bearer $JWT_FIRST"
    check_bearer_target "$name" "$JWT_LAST" "$JWT_TAMPERED" "a tampered token (one signature character changed)"
    use_token_pool "$name" "$JWT_POOL"
}
start_portcullis_jwt_pool() {
    start_portcullis_jwt "$1" "# per_core: the default token cache (100,000 verified tokens per core)"
}
start_portcullis_jwt_pool_nometrics() {
    start_portcullis_jwt "$1" "# per_core: the default token cache (100,000 verified tokens per core)" false
}
start_portcullis_jwt_nocache() {
    start_portcullis_jwt "$1" "per_core: { token_cache_entries: 0 }   # no cache: every request verifies a signature"
}

# nginx as a plain reverse proxy, loaded by the same token-rotating wrk script as the bearer
# targets: the fair plain-proxy baseline for them, since wrk's Lua work and the larger requests
# cost the load core the same here.
start_nginx_tokens() {
    local name=$1
    ensure_jwt_pool
    start_nginx_proxy "$name"
    use_token_pool "$name" "$JWT_POOL"
}

start_haproxy_jwt() {
    local name=$1 version
    version=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
    awk -v v="$version" 'BEGIN { split(v, a, "."); exit !(a[1] > 2 || (a[1] == 2 && a[2] >= 5)) }' ||
        die "$name needs HAProxy >= 2.5 for jwt_verify (this is ${version:-unknown})"
    ensure_jwt_pool
    mkdir -p "$WORK/$name"
    cp "$JWT_PUBKEY" "$WORK/$name/pub.pem"
    TMPL_VARS=(PUBKEY_FILE="$WORK/$name/pub.pem" ALG=RS256 ISSUER="$JWT_ISSUER")
    start_haproxy "$name" "$PERF_DIR/conf/haproxy-jwt.cfg.tmpl" -H "Authorization: Bearer $JWT_FIRST"
    check_bearer_target "$name" "$JWT_LAST" "$JWT_TAMPERED" "a tampered token (one signature character changed)"
    use_token_pool "$name" "$JWT_POOL"
}

INTROSPECT_ADDR=""
INTROSPECT_STATS=""   # the fake endpoint's counters after the rounds
start_fake_introspect() {
    [[ -z $INTROSPECT_ADDR ]] || return 0
    ensure_opaque_pool
    alloc_port
    INTROSPECT_ADDR=127.0.0.1:$PORT
    start_pinned fake-introspect "$LOAD_CPU" "$NODE" "$PERF_DIR/tools/fake-introspect.js" "$PORT" "$OPAQUE_POOL"
    wait_listening fake-introspect "$PORT" "$LAST_PID"
}

start_portcullis_introspect() {
    local name=$1
    start_fake_introspect
    TMPL_VARS=(INTROSPECT="$INTROSPECT_ADDR")
    start_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-introspect.yaml.tmpl" -H "Authorization: Bearer $OPAQUE_FIRST"
    check_bearer_target "$name" "$(tail -n1 "$OPAQUE_POOL")" "$OPAQUE_TAMPERED" "an unknown opaque token (introspection says inactive)"
    use_token_pool "$name" "$OPAQUE_POOL"
}

# Portcullis without auth, loaded with the introspection target's requests (the same opaque
# tokens through the same wrk script): the baseline that leaves only introspection's own cost.
start_portcullis_opaque() {
    local name=$1
    ensure_opaque_pool
    start_portcullis "$name" io_uring
    use_token_pool "$name" "$OPAQUE_POOL"
}

# ---- Admin API churn: the same load while another route is PUT about 10 times a second
# (perf/tools/put-loop.sh, on core $LOAD_CPU, active only while its target is measured). The
# route under load must keep its caches and balancer state through every PUT.
declare -A ADMIN_PORT_OF=() PUTS_FLAG=() IDP_CALLS=() PUTS_MADE=()
start_puts() {
    local name=$1 dir=$WORK/$1
    [[ -s $dir/data/admin.key ]] || die "$name: no generated Admin API key in $dir/data/admin.key"
    PUTS_FLAG[$name]=$WORK/puts-on-$name
    start_pinned "puts-$name" "$LOAD_CPU" "$PERF_DIR/tools/put-loop.sh" "${ADMIN_PORT_OF[$name]}" \
        "$dir/data/admin.key" "${PUTS_FLAG[$name]}" "$WORK/logs/puts-$name.status" "$UPSTREAM_ADDR"
}
start_portcullis_uring_puts() { start_portcullis_uring "$1"; start_puts "$1"; }
start_portcullis_introspect_puts() { start_portcullis_introspect "$1"; start_puts "$1"; }

# introspections_so_far — the fake introspection endpoint's call counter (empty without one).
introspections_so_far() {
    [[ -n $INTROSPECT_ADDR ]] || return 0
    curl -sS --max-time 5 "http://$INTROSPECT_ADDR/stats" 2>/dev/null | sed -n 's/.*"introspections":\([0-9]*\).*/\1/p'
}

# A probe decides whether a target joins the default selection (PERF_TARGETS empty); a target
# named in PERF_TARGETS always runs, and fails loudly if it cannot.
probe_introspect() {
    local dir=$WORK/probe-introspect
    mkdir -p "$dir"
    render "$PERF_DIR/conf/portcullis-introspect.yaml.tmpl" "$dir/config.yaml" DIR="$dir" PORT=1 ADMIN_PORT=2 \
        DRIVER=io_uring UPSTREAM=127.0.0.1:3 INTROSPECT=127.0.0.1:4
    "$PORTCULLIS_BIN" -c "$dir/config.yaml" check >"$WORK/logs/probe-introspect.log" 2>&1 || {
        PROBE_WHY="this portcullis refuses the introspection config: $(grep -v 'invalid config' "$WORK/logs/probe-introspect.log" | head -n1 | sed 's/^ *//')"
        return 1
    }
}

# ---- session target (the browser login flow)
# One Portcullis whose route runs the login flow against perf/tools/fake-oidc.js. After it
# starts, curl logs in once (protected URL → the fake's /authorize → the callback → the session
# cookie); wrk then sends that cookie on every request, which Portcullis serves from its per-core
# session cache without calling the IdP.
SESSION_SECRET=perf-session-secret-0123456789ab   # fixed, 32 characters
SESSION_HOST=perf.test
SESSION_NAME=portcullis-session   # the Portcullis instance that holds the session
SESSION_COOKIE=""                 # the request's Cookie value: session=…[; session_2=…]
SESSION_CHUNKS=0
SESSION_PORT=""
IDP_ADDR=""
IDP_STATS=""                      # the fake IdP's counters after the rounds

start_fake_oidc() {
    [[ -z $IDP_ADDR ]] || return 0
    [[ -r $JWT_PRIVKEY ]] || die "test key missing: $JWT_PRIVKEY"
    alloc_port
    IDP_ADDR=127.0.0.1:$PORT
    start_pinned fake-oidc "$LOAD_CPU" "$NODE" "$PERF_DIR/tools/fake-oidc.js" "$PORT" "$JWT_PRIVKEY" \
        --client-id perf --client-secret perf-secret
    wait_listening fake-oidc "$PORT" "$LAST_PID"
}

# login_step NAME WHAT URL — one GET with the login's cookie jar, Host perf.test sent to the
# session Portcullis; sets L_CODE (status), L_LOCATION (absolute Location) and L_BODY (file).
# The response heads go to logs/session-login/.
login_step() {
    local name=$1 what=$2 url=$3 dir=$WORK/$SESSION_NAME/login out
    mkdir -p "$dir" "$WORK/logs/session-login"
    L_BODY=$dir/body
    out=$(curl -sS --max-time 10 --connect-to "$SESSION_HOST:80:127.0.0.1:$SESSION_PORT" \
        -c "$dir/jar" -b "$dir/jar" -D "$WORK/logs/session-login/head-$what" -o "$L_BODY" -w '%{http_code} %{redirect_url}' \
        "$url" 2>"$dir/curl-err") || out="none (curl: $(head -c 200 "$dir/curl-err"))"
    L_CODE=${out%% *}
    L_LOCATION=${out#* }
    [[ $L_CODE != none ]] || L_LOCATION=""
    log "$name login, $what: $L_CODE${L_LOCATION:+ → ${L_LOCATION:0:100}}"
}

# session_cookie_from_jar FILE — the jar's session cookie as a Cookie value, chunks in order
# (session, session_2, …); fails when there is none or a chunk is missing.
session_cookie_from_jar() {
    awk -F'\t' '
        /^#HttpOnly_/ { sub(/^#HttpOnly_/, "") }
        /^#/ || NF < 7 { next }
        $6 ~ /^session(_[0-9]+)?$/ {
            i = ($6 == "session") ? 1 : substr($6, 9) + 0
            c[i] = $6 "=" $7
            if (i > n) n = i
        }
        END {
            if (n == 0) exit 1
            for (i = 1; i <= n; i++) { if (!(i in c)) exit 1; printf "%s%s", (i > 1 ? "; " : ""), c[i] }
        }' "$1"
}

# ensure_session — start the fake IdP and the session Portcullis, log in once, set
# SESSION_COOKIE. Fails loudly at any step that is not what the login flow should do.
ensure_session() {
    [[ -z $SESSION_COOKIE ]] || return 0
    local name=$SESSION_NAME pid deadline jar=$WORK/$SESSION_NAME/login/jar authz callback
    start_fake_oidc
    TMPL_VARS=(IDP="$IDP_ADDR" SESSION_SECRET="$SESSION_SECRET")
    launch_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-session.yaml.tmpl"
    pid=$LAST_PID
    SESSION_PORT=$PORT
    wait_listening "$name" "$SESSION_PORT" "$pid"
    authz="http://$IDP_ADDR/authorize?"

    # 1. A protected URL without a session: 302 to the fake's /authorize (once discovery is in;
    #    until then Portcullis may answer 503).
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        is_alive "$pid" || { tail -n 40 "$WORK/logs/$name.log" >&2 || true; die "$name (pid $pid) exited before the login (log above)"; }
        login_step "$name" protected "http://$SESSION_HOST/"
        [[ $L_CODE == 302 && $L_LOCATION == "$authz"* ]] && break
        [[ $L_CODE == none || $L_CODE == 5* ]] && ((SECONDS < deadline)) || {
            tail -n 20 "$WORK/logs/$name.log" >&2 || true
            die "$name: a protected URL without a session answered $L_CODE (Location: ${L_LOCATION:-none}) instead of 302 to $authz… (body: $(head -c 300 "$L_BODY" | tr '\n' ' '))"
        }
        sleep 0.5
    done
    grep -qi '^set-cookie: session_login_' "$WORK/logs/session-login/head-protected" ||
        die "$name: the redirect to the IdP set no login attempt cookie (session_login_…; headers in $OUT_DIR/logs/session-login/)"

    # 2. The fake IdP's /authorize: 302 to the callback with a code.
    login_step "$name" authorize "$L_LOCATION"
    callback="http://$SESSION_HOST/.apisix/redirect?"
    [[ $L_CODE == 302 && $L_LOCATION == "$callback"* && $L_LOCATION == *code=* ]] ||
        die "fake-oidc: /authorize answered $L_CODE (Location: ${L_LOCATION:-none}) instead of 302 to $callback…code=… (body: $(head -c 300 "$L_BODY" | tr '\n' ' '))"

    # 3. The callback on Portcullis, with the attempt cookie: code exchange, id token check,
    #    userinfo, then 302 back to the protected URL with the session cookie.
    login_step "$name" callback "$L_LOCATION"
    [[ $L_CODE == 302 && $L_LOCATION == "http://$SESSION_HOST/" ]] || {
        tail -n 20 "$WORK/logs/$name.log" >&2 || true
        die "$name: the callback answered $L_CODE (Location: ${L_LOCATION:-none}) instead of 302 back to http://$SESSION_HOST/ (body: $(head -c 300 "$L_BODY" | tr '\n' ' '))"
    }
    grep -qi '^set-cookie: session=' "$WORK/logs/session-login/head-callback" ||
        die "$name: the callback set no session cookie (headers in $OUT_DIR/logs/session-login/)"

    # 4. The protected URL again, with the jar: the upstream's answer.
    login_step "$name" "with-session" "http://$SESSION_HOST/"
    [[ $L_CODE == 200 && $(<"$L_BODY") == *"$EXPECTED_BODY"* ]] ||
        die "$name: with the session cookie the protected URL answered $L_CODE instead of 200 with the upstream's body (body: $(head -c 300 "$L_BODY" | tr '\n' ' '))"

    SESSION_COOKIE=$(session_cookie_from_jar "$jar") ||
        die "$name: no complete session cookie (session, session_2, …) in the jar $jar"
    SESSION_CHUNKS=$(tr ';' '\n' <<<"$SESSION_COOKIE" | grep -c =)
    log "$name: logged in; the session cookie is ${#SESSION_COOKIE} bytes in $SESSION_CHUNKS chunk(s)"

    # The exact requests wrk sends (127.0.0.1, Host header, Cookie header): 200 with the upstream's
    # body and no renewed cookie; a tampered cookie or none is no session (302 to the IdP).
    session_check "$name"
    local first=${SESSION_COOKIE%%;*} tampered pos
    pos=$((${#first} / 2))
    tampered="${first:0:pos}$([[ ${first:pos:1} == A ]] && echo B || echo A)${first:pos+1}${SESSION_COOKIE:${#first}}"
    session_expect_login "$name" "a tampered session cookie" -H "Cookie: $tampered"
    session_expect_login "$name" "no cookie"
}

# session_check NAME — one request as wrk sends it must answer 200 with the upstream's body and
# without Set-Cookie (no re-sealed session). Also run after the warm-up and every measured run:
# wrk counts a 302 as a success.
session_check() {
    local name=$1 code
    code=$(curl -sS --max-time 5 -D "$WORK/check-head" -o "$WORK/check-body" -w '%{http_code}' \
        -H "Host: $SESSION_HOST" -H "Cookie: $SESSION_COOKIE" "http://127.0.0.1:$SESSION_PORT/" 2>"$WORK/check-err") ||
        code="none (curl: $(head -c 200 "$WORK/check-err"))"
    [[ $code == 200 && $(<"$WORK/check-body") == *"$EXPECTED_BODY"* ]] ||
        die "$name answered $code instead of 200 with the upstream's body to a request with the session cookie (Location: $(awk 'tolower($1) == "location:" { print $2 }' "$WORK/check-head" | tr -d '\r'))"
    ! grep -qi '^set-cookie:' "$WORK/check-head" ||
        die "$name renewed the session cookie on a request with it (wrk would keep sending the old one): $(grep -i '^set-cookie:' "$WORK/check-head" | head -c 200)"
}

# session_expect_login NAME WHAT [curl args] — answered with a 302 to the IdP's /authorize.
session_expect_login() {
    local name=$1 what=$2 out code location
    shift 2
    out=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{redirect_url}' \
        -H "Host: $SESSION_HOST" "$@" "http://127.0.0.1:$SESSION_PORT/" 2>&1) || out="none $out"
    code=${out%% *}
    location=${out#* }
    [[ $code == 302 && $location == "http://$IDP_ADDR/authorize?"* ]] ||
        die "$name answered $code (Location: $location) instead of 302 to the IdP to a request with $what"
    log "$name answers 302 to the IdP to a request with $what"
}

start_portcullis_session() {
    local name=$1
    [[ $name == "$SESSION_NAME" ]] || die "the session target must be named $SESSION_NAME"
    ensure_session
    TARGET_URL[$name]="http://127.0.0.1:$SESSION_PORT/"
    TARGET_WRK[$name]+=$(printf '%q ' -H "Host: $SESSION_HOST" -H "Cookie: $SESSION_COOKIE")
    TARGET_CHECK[$name]=session_check
}

# Portcullis without auth, loaded with exactly the session target's requests (the same Host and
# Cookie headers): the baseline that leaves only the session's own cost. It needs the cookie of a
# real login, so it starts the session Portcullis too when that target is not selected.
start_portcullis_cookie() {
    local name=$1
    ensure_session
    start_portcullis "$name" io_uring
    TARGET_WRK[$name]+=$(printf '%q ' -H "Host: $SESSION_HOST" -H "Cookie: $SESSION_COOKIE")
}

# The session targets join the default selection only if this portcullis accepts the login
# flow's config (builds before the login flow refuse it).
probe_session() {
    local dir=$WORK/probe-session
    mkdir -p "$dir"
    render "$PERF_DIR/conf/portcullis-session.yaml.tmpl" "$dir/config.yaml" DIR="$dir" PORT=1 ADMIN_PORT=2 \
        STATUS_PORT=5 METRICS=true DRIVER=io_uring UPSTREAM=127.0.0.1:3 IDP=127.0.0.1:4 SESSION_SECRET="$SESSION_SECRET"
    "$PORTCULLIS_BIN" -c "$dir/config.yaml" check >"$WORK/logs/probe-session.log" 2>&1 || {
        PROBE_WHY="this portcullis refuses the login flow's config: $(grep -v 'invalid config' "$WORK/logs/probe-session.log" | head -n1 | sed 's/^ *//')"
        return 1
    }
}

# ---- TLS targets
# nginx and Portcullis terminate TLS with the same ECDSA P-256 certificate (made per run by
# openssl) in front of the same upstream. Three loads per server:
#   *-https       keep-alive HTTPS requests (wrk);
#   *-tls-full    new connections with a full handshake and one request each: S_TIME_PROCS
#                 parallel `openssl s_time -new` clients (wrk would resume its sessions);
#   *-tls-resume  new connections with one request each, resumed (wrk with Connection: close:
#                 it keeps each connection's TLS 1.2 session and offers its ticket on reconnect).
# For the last two, core 0 µs/req is the proxy's CPU per handshake (plus one proxied request).
TLS_CERT="" TLS_KEY=""
NGINX_HTTPS_URL="" PORTCULLIS_HTTPS_URL=""

ensure_tls_cert() {
    [[ -z $TLS_CERT ]] || return 0
    mkdir -p "$WORK/tls"
    TLS_CERT=$WORK/tls/cert.pem
    TLS_KEY=$WORK/tls/key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=perf.test -addext subjectAltName=DNS:perf.test \
        -keyout "$TLS_KEY" -out "$TLS_CERT" >"$WORK/logs/tls-cert.log" 2>&1 ||
        { cat "$WORK/logs/tls-cert.log" >&2; die "openssl could not make the benchmark certificate"; }
    log "made an ECDSA P-256 certificate for perf.test"
}

ensure_nginx_https() {
    [[ -z $NGINX_HTTPS_URL ]] || return 0
    local name=nginx-https-server dir=$WORK/nginx-https
    ensure_tls_cert
    mkdir -p "$dir"
    alloc_port
    render "$PERF_DIR/conf/nginx-https.conf.tmpl" "$dir/nginx.conf" DIR="$dir" PORT="$PORT" \
        UPSTREAM="$UPSTREAM_ADDR" CERT="$TLS_CERT" KEY="$TLS_KEY"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" >"$WORK/logs/$name-config-test.log" 2>&1 ||
        { cat "$WORK/logs/$name-config-test.log" >&2; die "$name config test failed"; }
    start_pinned "$name" "$PROXY_CPU" nginx -p "$dir" -c "$dir/nginx.conf"
    NGINX_HTTPS_URL="https://127.0.0.1:$PORT/"
    wait_ready "$name" "$NGINX_HTTPS_URL" "$LAST_PID" -k
    check_resumption "$name" "$NGINX_HTTPS_URL"
}

ensure_portcullis_https() {
    [[ -z $PORTCULLIS_HTTPS_URL ]] || return 0
    local name=portcullis-https-server tls_port pid
    ensure_tls_cert
    alloc_port
    tls_port=$PORT
    TMPL_VARS=(TLS_PORT="$tls_port" CERT="$TLS_CERT" KEY="$TLS_KEY")
    launch_portcullis "$name" io_uring "$PERF_DIR/conf/portcullis-https.yaml.tmpl"
    pid=$LAST_PID
    wait_ready "$name" "${TARGET_URL[$name]}" "$pid"
    PORTCULLIS_HTTPS_URL="https://127.0.0.1:$tls_port/"
    wait_ready "$name" "$PORTCULLIS_HTTPS_URL" "$pid" -k
    check_resumption "$name" "$PORTCULLIS_HTTPS_URL"
}

# check_resumption NAME URL — a TLS 1.2 session saved from one connection must resume on the
# next, as the resume targets assume (and TLS 1.3 too).
check_resumption() {
    local name=$1 hostport=${2#https://} v out
    hostport=${hostport%/}
    for v in -tls1_2 -tls1_3; do
        printf 'GET / HTTP/1.1\r\nHost: perf.test\r\nConnection: close\r\n\r\n' |
            timeout 10 openssl s_client -connect "$hostport" "$v" -sess_out "$WORK/tls/sess$v" -ign_eof \
                >"$WORK/logs/$name-resume-1$v.log" 2>&1 || true
        out=$(printf 'GET / HTTP/1.1\r\nHost: perf.test\r\nConnection: close\r\n\r\n' |
            timeout 10 openssl s_client -connect "$hostport" "$v" -sess_in "$WORK/tls/sess$v" -ign_eof 2>&1) || true
        printf '%s\n' "$out" >"$WORK/logs/$name-resume-2$v.log"
        grep -q '^Reused, ' <<<"$out" || die "$name did not resume a $v session (logs/$name-resume-2$v.log)"
    done
    log "$name resumes TLS 1.2 and 1.3 sessions"
}

start_nginx_https() { ensure_nginx_https; TARGET_URL[$1]=$NGINX_HTTPS_URL; }
start_portcullis_https() { ensure_portcullis_https; TARGET_URL[$1]=$PORTCULLIS_HTTPS_URL; }
start_nginx_tls_full() { ensure_nginx_https; TARGET_URL[$1]=$NGINX_HTTPS_URL; TARGET_TOOL[$1]=s_time; }
start_portcullis_tls_full() { ensure_portcullis_https; TARGET_URL[$1]=$PORTCULLIS_HTTPS_URL; TARGET_TOOL[$1]=s_time; }
start_nginx_tls_resume() {
    ensure_nginx_https
    TARGET_URL[$1]=$NGINX_HTTPS_URL
    TARGET_WRK[$1]+=$(printf '%q ' -H "Connection: close")
}
start_portcullis_tls_resume() {
    ensure_portcullis_https
    TARGET_URL[$1]=$PORTCULLIS_HTTPS_URL
    TARGET_WRK[$1]+=$(printf '%q ' -H "Connection: close")
}

# The order here is the order within each round and in the table.
add_target upstream-direct        start_upstream_direct
add_target nginx                  start_nginx_proxy
add_target haproxy                start_haproxy
add_target portcullis-uring       start_portcullis_uring
add_target portcullis-epoll       start_portcullis_epoll
add_target portcullis-uring-nometrics start_portcullis_uring_nometrics
add_target portcullis-etcd        start_portcullis_etcd
add_target nginx-tokens           start_nginx_tokens
add_target portcullis-jwt-pool    start_portcullis_jwt_pool
add_target portcullis-jwt-pool-nometrics start_portcullis_jwt_pool_nometrics
add_target portcullis-jwt-nocache start_portcullis_jwt_nocache
add_target haproxy-jwt            start_haproxy_jwt
add_target portcullis-introspect  start_portcullis_introspect
add_target portcullis-introspect-puts start_portcullis_introspect_puts
add_target portcullis-uring-puts  start_portcullis_uring_puts
add_target portcullis-opaque      start_portcullis_opaque
add_target portcullis-session     start_portcullis_session
add_target portcullis-cookie      start_portcullis_cookie
add_target nginx-https            start_nginx_https
add_target portcullis-https       start_portcullis_https
add_target nginx-tls-full         start_nginx_tls_full
add_target portcullis-tls-full    start_portcullis_tls_full
add_target nginx-tls-resume       start_nginx_tls_resume
add_target portcullis-tls-resume  start_portcullis_tls_resume
TARGET_NODE=([nginx-tokens]=1 [portcullis-jwt-pool]=1 [portcullis-jwt-pool-nometrics]=1 [portcullis-jwt-nocache]=1 [haproxy-jwt]=1 [portcullis-introspect]=1 [portcullis-opaque]=1
    [portcullis-session]=1 [portcullis-cookie]=1 [portcullis-introspect-puts]=1)
TARGET_PROBE=([portcullis-introspect]=probe_introspect [portcullis-session]=probe_session [portcullis-cookie]=probe_session
    [portcullis-introspect-puts]=probe_introspect)

# ---------------------------------------------------------------- measuring
RAW=""   # TSV of every measured run

# run_wrk LOGFILE DURATION URL [extra wrk args] [-- script args] — one bounded wrk
# run; the output goes to LOGFILE, parsed numbers into W_* variables. Args after
# `--` go after the URL, where wrk hands them to the Lua script's init(args).
run_wrk() {
    local logfile=$1 dur=$2 url=$3 parsed
    local -a opts=() script_args=()
    shift 3
    while (($# > 0)); do
        if [[ $1 == -- ]]; then
            script_args=("$@")
            break
        fi
        opts+=("$1")
        shift
    done
    timeout --kill-after=5 $((dur + 30)) \
        taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${dur}s" --latency "${opts[@]}" "$url" "${script_args[@]}" \
        >"$logfile" 2>&1 || { cat "$logfile" >&2; die "wrk failed against $url (output above)"; }
    parsed=$(awk '
        function ms(v,   n, u) {
            n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
            if (u == "us") return n / 1000
            if (u == "ms") return n
            if (u == "s")  return n * 1000
            if (u == "m")  return n * 60000
            if (u == "h")  return n * 3600000
            return -1
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /^Requests\/sec:/ { rps = $2 }
        / requests in / { req = $1 }
        /Non-2xx or 3xx responses:/ { non = $NF }
        /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
        END {
            if (rps == "" || p50 == "" || p99 == "") { print "PARSE_ERROR"; exit }
            printf "%s %.3f %.3f %d %d %d %d %d %d\n", rps, p50, p99, req, non, c, r, w, t
        }' "$logfile")
    [[ $parsed != PARSE_ERROR ]] || { cat "$logfile" >&2; die "could not parse wrk output (above)"; }
    read -r W_RPS W_P50 W_P99 W_REQ W_NON2XX W_CONNERR W_READERR W_WRITEERR W_TIMEOUT <<<"$parsed"
    W_SOCKERR=$((W_CONNERR + W_READERR + W_WRITEERR + W_TIMEOUT))
}

# run_s_time LOGFILE DURATION URL — S_TIME_PROCS parallel `openssl s_time -new` clients on the
# load core for DURATION seconds, each making connection after connection with a full handshake
# and one GET. Sets the W_* variables as run_wrk does (no latency figures: W_P50/W_P99 are 0).
run_s_time() {
    local logfile=$1 dur=$2 url=$3 hostport i total=0 n
    local -a pids=()
    hostport=${url#https://}
    hostport=${hostport%/}
    for ((i = 0; i < S_TIME_PROCS; i++)); do
        timeout --kill-after=5 $((dur + 30)) taskset -c "$LOAD_CPU" \
            openssl s_time -connect "$hostport" -new -time "$dur" -www / >"$logfile.$i" 2>&1 &
        pids+=($!)
    done
    for ((i = 0; i < S_TIME_PROCS; i++)); do
        wait "${pids[$i]}" || { cat "$logfile.$i" >&2; die "openssl s_time failed against $url (output above)"; }
        # "N connections in T real seconds, B bytes read per connection"
        n=$(awk '/connections in .* real seconds/ { n = $1 } END { print n + 0 }' "$logfile.$i")
        grep -q 'bytes read per connection' "$logfile.$i" && ! grep -q ' 0 bytes read per connection' "$logfile.$i" ||
            { cat "$logfile.$i" >&2; die "openssl s_time read no answer from $url (output above)"; }
        total=$((total + n))
    done
    cat "$logfile".* >"$logfile"
    rm -f "$logfile".*
    W_RPS=$(awk -v n="$total" -v d="$dur" 'BEGIN { printf "%.2f", n / d }')
    W_P50=0 W_P99=0 W_REQ=$total W_NON2XX=0 W_CONNERR=0 W_READERR=0 W_WRITEERR=0 W_TIMEOUT=0 W_SOCKERR=0
}

# load LOGFILE DURATION NAME URL [extra wrk args] — the target's load tool (wrk, or s_time).
load() {
    local logfile=$1 dur=$2 name=$3
    shift 3
    if [[ ${TARGET_TOOL[$name]:-wrk} == s_time ]]; then
        run_s_time "$logfile" "$dur" "$1"
    else
        run_wrk "$logfile" "$dur" "$@"
    fi
}

# cpu_jiffies CPU — prints "busy total" jiffies of one core from /proc/stat.
cpu_jiffies() {
    awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Background work that distorts the numbers (a build or test run on this
# machine). A sampler runs during each measured run and leaves a flag file.
BACKGROUND_PATTERN=${BACKGROUND_PATTERN:-cargo|rustc|cc1|cc1plus|ld|ld.lld|rust-lld}
SAMPLER_PID=""
start_sampler() {
    rm -f "$1"
    (
        while :; do
            if pgrep -x "$BACKGROUND_PATTERN" >/dev/null 2>&1; then
                pgrep -a -x "$BACKGROUND_PATTERN" 2>/dev/null | cut -c1-120 >>"$1"
            fi
            sleep 1
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    [[ -n $SAMPLER_PID ]] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# measure NAME URL [extra wrk args] — one measured run of $DURATION seconds in
# round $ROUND; appends a row to $RAW, with how busy the proxy core was and its
# CPU time per request.
ROUND=0
measure() {
    local name=$1 url=$2 b0 t0 b1 t1 busy_pct us_per_req bg=0 flag calls0 calls1 puts0=0 puts1=0 status_log
    shift 2
    flag=$WORK/logs/background-r$ROUND-$name.txt
    status_log=$WORK/logs/puts-$name.status
    calls0=$(introspections_so_far)
    if [[ -n ${PUTS_FLAG[$name]:-} ]]; then
        [[ -f $status_log ]] && puts0=$(wc -l <"$status_log")
        touch "${PUTS_FLAG[$name]}"
    fi
    start_sampler "$flag"
    read -r b0 t0 < <(cpu_jiffies "$PROXY_CPU")
    load "$WORK/logs/wrk-r$ROUND-$name.txt" "$DURATION" "$name" "$url" "$@"
    read -r b1 t1 < <(cpu_jiffies "$PROXY_CPU")
    stop_sampler
    if [[ -n ${PUTS_FLAG[$name]:-} ]]; then
        rm -f "${PUTS_FLAG[$name]}"
        sleep 0.3   # a PUT in flight finishes
        [[ -f $status_log ]] && puts1=$(wc -l <"$status_log")
        PUTS_MADE[$name]=$(( ${PUTS_MADE[$name]:-0} + puts1 - puts0 ))
        ! grep -qv '^20[01]$' "$status_log" || die "$name: an Admin API PUT failed (statuses in $status_log)"
    fi
    calls1=$(introspections_so_far)
    if [[ -n $calls0 && -n $calls1 ]]; then
        IDP_CALLS[$name]=$(( ${IDP_CALLS[$name]:-0} + calls1 - calls0 ))
    fi
    [[ -s $flag ]] && bg=1
    busy_pct=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.1f", (t > 0 ? 100 * b / t : 0) }')
    us_per_req=$(awk -v b=$((b1 - b0)) -v hz="$CLK_TCK" -v r="$W_REQ" 'BEGIN { printf "%.2f", (r > 0 ? b * 1e6 / hz / r : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$name" "$W_RPS" "$W_P50" "$W_P99" \
        "$W_REQ" "$W_NON2XX" "$W_CONNERR" "$W_READERR" "$W_WRITEERR" "$W_TIMEOUT" "$busy_pct" "$us_per_req" "$bg" >>"$RAW"
    log "round $ROUND $(printf '%-18s' "$name") $(printf '%10.0f' "$W_RPS") req/s  p50 ${W_P50} ms  p99 ${W_P99} ms  core $PROXY_CPU ${busy_pct}% ${us_per_req} us/req  non-2xx ${W_NON2XX}  socket errors ${W_SOCKERR}$( ((bg == 0)) || echo "  [background build/test seen]")"
}

# warm_up NAME URL [extra wrk args] — doubles as a one-shot check: fails if the
# target served nothing, answered non-2xx, or had connect errors.
warm_up() {
    local name=$1 url=$2
    shift 2
    ((WARMUP > 0)) || return 0
    load "$WORK/logs/wrk-warmup-$name.txt" "$WARMUP" "$name" "$url" "$@"
    ((W_REQ > 0)) || die "$name served no request during warm-up"
    ((W_NON2XX == 0)) || die "$name answered $W_NON2XX non-2xx/3xx responses during warm-up (see $OUT_DIR/logs/wrk-warmup-$name.txt)"
    ((W_CONNERR == 0)) || die "$name had $W_CONNERR connect errors during warm-up"
    ((W_SOCKERR == 0)) || log "WARNING: $name had socket errors during warm-up: read $W_READERR write $W_WRITEERR timeout $W_TIMEOUT"
    log "warm-up $name: $(printf '%.0f' "$W_RPS") req/s"
}

check_all_alive() {
    local i
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        is_alive "${PIDS[$i]}" || {
            tail -n 40 "$WORK/logs/${PID_NAMES[$i]}.log" >&2 || true
            die "${PID_NAMES[$i]} (pid ${PIDS[$i]}) died during the benchmark (log above)"
        }
    done
}

# ---------------------------------------------------------------- report
in_selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

# goal_row A B GOAL — A's median req/s ÷ B's against GOAL (A should reach GOAL × B), with the
# per-request CPU ratio beside it (B's µs/req ÷ A's: above 1 means A needs less CPU per request).
goal_row() {
    local a=$1 b=$2 goal=$3 ra rb ua ub busy_a busy_b missing=() why
    in_selected "$a" || missing+=("$a")
    in_selected "$b" || missing+=("$b")
    if ((${#missing[@]} > 0)); then
        why="not run: ${missing[*]}"
        printf '| `%s` vs `%s` | n/a | ≥ %s | n/a (%s) | n/a | n/a |\n' "$a" "$b" "$goal" "$why"
        return 0
    fi
    ra=$(col_of "$a" 3 | median)
    rb=$(col_of "$b" 3 | median)
    ua=$(col_of "$a" 13 | median)
    ub=$(col_of "$b" 13 | median)
    busy_a=$(col_of "$a" 12 | median)
    busy_b=$(col_of "$b" 12 | median)
    awk -v a="$a" -v b="$b" -v ra="$ra" -v rb="$rb" -v ua="$ua" -v ub="$ub" -v g="$goal" -v ba="$busy_a" -v bb="$busy_b" 'BEGIN {
        r = (rb > 0 ? ra / rb : 0)
        printf "| `%s` vs `%s` | %.2f | ≥ %s | %s | %s | %.0f / %.0f |\n", a, b, r, g, (r >= g ? "yes" : "**no**"),
            (ua > 0 ? sprintf("%.2f", ub / ua) : "n/a"), ba, bb
    }'
}

# session_idp_verdict — after the IdP counters: whether the run made IdP calls beyond the one
# login (its /authorize, /token and /userinfo, plus discovery and JWKS at start).
session_idp_verdict() {
    local calls
    calls=$("$NODE" -e '
        let s; try { s = JSON.parse(process.argv[1]); } catch (e) { process.exit(1); }
        const r = s.requests || {};
        console.log(`${r["/authorize"] || 0} ${r["/token"] || 0} ${r["/userinfo"] || 0} ${s.refused || 0}`);
    ' "$IDP_STATS" 2>/dev/null) || { echo " (unreadable)"; return 0; }
    if [[ $calls == "1 1 1 0" ]]; then
        echo " (one login: 1 authorize, 1 token, 1 userinfo call; no IdP call per request)"
    else
        echo ". **WARNING: authorize/token/userinfo/refused = ${calls// //}, not the one login's 1/1/1/0: the load did not run on the one session**"
    fi
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col_of() { awk -F'\t' -v n="$1" -v c="$2" '$2 == n { print $c }' "$RAW"; }

report() {
    local name rps p50 p99 busy uspr base_rps="" base_p99="" r_rps r_p99 errs non sock cpu_model pc_version git_rev nbg nruns nnon note
    cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    [[ -n $cpu_model ]] || cpu_model=$(awk -F': *' '/^(Hardware|cpu model|uarch)/ { print $2; exit }' /proc/cpuinfo)
    git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
    [[ -z $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || git_rev+=", src modified"
    pc_version=n/a
    if [[ -n $PORTCULLIS_BIN ]]; then
        pc_version=$(timeout 5 "$PORTCULLIS_BIN" --version 2>/dev/null | head -n1) || true
        [[ -n $pc_version ]] || pc_version="unknown"
    fi

    if [[ " ${SELECTED[*]} " == *" $BASELINE "* ]]; then
        base_rps=$(col_of "$BASELINE" 3 | median)
        base_p99=$(col_of "$BASELINE" 5 | median)
    fi

    echo "# Portcullis whole-proxy benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- machine: nproc $(nproc), ${cpu_model:-unknown CPU}, kernel $(uname -r)"
    echo "- versions: $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }'), wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'), portcullis ${pc_version} (git: ${git_rev})"
    echo "- method: \`taskset -c $LOAD_CPU wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency\`, $ROUNDS alternating rounds (${WARMUP}s warm-up per target first); proxies pinned to core $PROXY_CPU, the upstream ($(upstream_desc)) and wrk to core $LOAD_CPU; upstream body \`hello world\\n\` (12 bytes), keep-alive everywhere"
    echo "- load average when measuring started: $LOADAVG_START"
    if in_selected portcullis-jwt-pool || in_selected portcullis-jwt-nocache || in_selected haproxy-jwt; then
        echo "- bearer JWTs: every request carries \`Authorization: Bearer <token>\`, rotating over $TOKEN_POOL distinct RS256 tokens (RSA-2048, about $(awk '{ s += length($0) } END { printf "%.0f", s / NR }' "$JWT_POOL") characters, ~380-byte claims, iss \`$JWT_ISSUER\`, exp a day ahead) via \`perf/wrk/tokens.lua\`. \`portcullis-jwt-pool\`: public_key route, default token cache (after the warm-up every token is a cache hit); \`portcullis-jwt-nocache\`: \`token_cache_entries: 0\`, so every request verifies an RS256 signature, which stands for **a new token on every request**; \`haproxy-jwt\`: \`jwt_verify\` (no cache in HAProxy, one signature check per request) plus alg, iss and exp checks"
    fi
    if in_selected portcullis-uring-nometrics || in_selected portcullis-jwt-pool-nometrics; then
        echo "- metrics: every Portcullis target counts for \`/metrics\` (\`status.metrics: true\`, the default; nothing scrapes during the runs); \`portcullis-uring-nometrics\` and \`portcullis-jwt-pool-nometrics\` are \`portcullis-uring\` and \`portcullis-jwt-pool\` with \`status.metrics: false\`, so their rows show what counting costs"
    fi
    if in_selected portcullis-introspect; then
        echo "- introspection: \`portcullis-introspect\` rotates over $TOKEN_POOL opaque tokens, validated by introspection against a fake endpoint (\`perf/tools/fake-introspect.js\`, node, on core $LOAD_CPU); warm cache after the warm-up. Endpoint counters at the end: ${INTROSPECT_STATS:-n/a}"
    fi
    if in_selected portcullis-uring-puts || in_selected portcullis-introspect-puts; then
        local t line=""
        for t in portcullis-uring-puts portcullis-introspect-puts; do
            in_selected "$t" || continue
            line+=" \`$t\`: ${PUTS_MADE[$t]:-0} PUTs in $((ROUNDS * DURATION)) s of measuring ($(awk -v p="${PUTS_MADE[$t]:-0}" -v s=$((ROUNDS * DURATION)) 'BEGIN { printf "%.1f", p / s }')/s);"
        done
        echo "- Admin API churn: the \`-puts\` targets are their base target while \`perf/tools/put-loop.sh\` PUTs another route (\`churn\`, two uris alternating) through the Admin API, only during their own measured runs:$line every PUT answered 200/201."
    fi
    if in_selected portcullis-introspect || in_selected portcullis-introspect-puts; then
        local t line=""
        for t in portcullis-introspect portcullis-introspect-puts; do
            in_selected "$t" || continue
            line+=" \`$t\` ${IDP_CALLS[$t]:-0};"
        done
        echo "- introspection calls the endpoint received during each target's measured runs (warm caches make these 0 unless a change emptied them):$line"
    fi
    if [[ -n $SESSION_COOKIE ]]; then
        echo "- session: \`portcullis-session\` runs the login flow (\`bearer_only: false\`, fixed \`session.secret\`, \`set_userinfo_header\`, \`set_id_token_header\`, \`set_access_token_header\`) against a fake OpenID provider (\`perf/tools/fake-oidc.js\`, node, on core $LOAD_CPU); curl logged in once, then every request carries \`Host: $SESSION_HOST\` and that session's \`Cookie\` header (${#SESSION_COOKIE} bytes, $SESSION_CHUNKS chunk(s)), served from the per-core session cache.$(in_selected portcullis-cookie && echo " \`portcullis-cookie\`: Portcullis without auth, fed the same headers.") IdP counters at the end: ${IDP_STATS:-n/a}$(session_idp_verdict)"
    fi
    echo "- values are medians over the rounds; ratios are against \`$BASELINE\` (req/s: higher is better; p99: lower is better); core $PROXY_CPU busy % and µs/req = CPU time used on the proxy core during the run (divided by the requests served); errors = non-2xx/3xx responses + socket errors, summed over all rounds"
    nbg=$(awk -F'\t' 'NR > 1 && $14 == 1 { n++ } END { print n + 0 }' "$RAW")
    nruns=$(awk 'NR > 1 { n++ } END { print n + 0 }' "$RAW")
    if ((nbg > 0)); then
        echo
        echo "**WARNING: a build or test ($BACKGROUND_PATTERN) was running during $nbg of $nruns measured runs (marked * below): these numbers are distorted. Rerun on an idle machine.**"
    fi
    echo
    echo "| target | req/s | p50 ms | p99 ms | req/s vs $BASELINE | p99 vs $BASELINE | core $PROXY_CPU busy % | core $PROXY_CPU µs/req | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${SELECTED[@]}"; do
        rps=$(col_of "$name" 3 | median)
        p50=$(col_of "$name" 4 | median)
        p99=$(col_of "$name" 5 | median)
        busy=$(col_of "$name" 12 | median)
        uspr=$(col_of "$name" 13 | median)
        non=$(awk -F'\t' -v n="$name" '$2 == n { s += $7 } END { print s + 0 }' "$RAW")
        sock=$(awk -F'\t' -v n="$name" '$2 == n { s += $8 + $9 + $10 + $11 } END { print s + 0 }' "$RAW")
        errs=$((non + sock))
        if [[ -n $base_rps ]]; then
            r_rps=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2f", a / b }')
            r_p99=$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "%.2f", a / b }')
        else
            r_rps=n/a
            r_p99=n/a
        fi
        if ((errs > 0)); then errs="$errs ($non non-2xx, $sock socket)"; fi
        printf '| %s | %.0f | %.3f | %.3f | %s | %s | %.0f | %.2f | %s |\n' "$name" "$rps" "$p50" "$p99" "$r_rps" "$r_p99" "$busy" "$uspr" "$errs"
    done
    nnon=$(awk -F'\t' 'NR > 1 { s += $7 } END { print s + 0 }' "$RAW")
    if ((nnon > 0)); then
        echo
        echo "**WARNING: $nnon non-2xx/3xx responses in the measured runs (see the errors column): a target refused requests, its numbers are not comparable.**"
    fi
    echo
    echo "Goals (req/s ratio = median req/s of the first ÷ the second; CPU ratio = the second's core $PROXY_CPU µs/req ÷ the first's, above 1 means the first needs less CPU per request; when the first's core $PROXY_CPU is well below 100% busy, core $LOAD_CPU capped it and the CPU ratio is the better guide):"
    echo
    echo "| comparison | req/s ratio | goal | met | CPU/req ratio | core $PROXY_CPU busy % (first / second) |"
    echo "|---|---:|---:|---|---:|---:|"
    goal_row portcullis-jwt-pool nginx 1.0
    goal_row portcullis-jwt-pool nginx-tokens 1.0
    goal_row portcullis-uring nginx 1.0
    goal_row portcullis-jwt-pool haproxy-jwt 3
    goal_row portcullis-jwt-nocache haproxy-jwt 1.5
    goal_row portcullis-introspect portcullis-uring 0.95
    goal_row portcullis-introspect portcullis-opaque 0.95
    goal_row portcullis-uring-puts portcullis-uring 0.95
    goal_row portcullis-introspect-puts portcullis-introspect 0.95
    goal_row portcullis-session portcullis-uring 0.9
    goal_row portcullis-session portcullis-cookie 0.9
    goal_row portcullis-https nginx-https 1.0
    goal_row portcullis-tls-full nginx-tls-full 1.0
    goal_row portcullis-tls-resume nginx-tls-resume 1.0
    # Counting for /metrics: under 2 % apart in req/s (and, in the CPU/req column, CPU per request).
    # Routes from etcd serve as fast as routes from the file: within noise.
    goal_row portcullis-etcd portcullis-uring 0.98
    goal_row portcullis-uring portcullis-uring-nometrics 0.98
    goal_row portcullis-jwt-pool portcullis-jwt-pool-nometrics 0.98
    if ((${#SKIPPED_NOTES[@]} > 0)); then
        echo
        for note in "${SKIPPED_NOTES[@]}"; do echo "- $note"; done
    fi
    echo
    echo "<details><summary>every round (req/s, p50 ms, p99 ms, core $PROXY_CPU µs/req; * = background build/test seen)</summary>"
    echo
    printf '| target |'
    for ((r = 1; r <= ROUNDS; r++)); do printf ' round %d |' "$r"; done
    printf '\n|---|'
    for ((r = 1; r <= ROUNDS; r++)); do printf -- '---:|'; done
    printf '\n'
    for name in "${SELECTED[@]}"; do
        printf '| %s |' "$name"
        awk -F'\t' -v n="$name" '$2 == n { printf " %.0f, %.3f, %.3f, %.2f%s |", $3, $4, $5, $13, ($14 == 1 ? " *" : "") }' "$RAW"
        printf '\n'
    done
    echo
    echo "</details>"
    if [[ -s $WORK/etcd-prop.md ]]; then
        echo
        cat "$WORK/etcd-prop.md"
    fi
    if [[ -s $WORK/rss.md ]]; then
        echo
        cat "$WORK/rss.md"
    fi
}

# ---------------------------------------------------------------- main
# 0 if a selected target, or the memory step, needs node.
needs_node() {
    local name
    for name in "${SELECTED[@]}"; do
        [[ -z ${TARGET_NODE[$name]:-} ]] || return 0
    done
    ((RSS_STEP)) && [[ " ${SELECTED[*]} " == *" portcullis"* ]]
}

# run_rss_step — perf/rss.sh against the same upstream, after the rounds; its Markdown section
# goes to $WORK/rss.md for the report. A failure there is reported, not fatal: the rounds'
# numbers are worth keeping.
run_rss_step() {
    ((RSS_STEP)) && [[ -n $PORTCULLIS_BIN ]] || return 0
    log "memory step: perf/rss.sh (RSS with distinct tokens cached; RSS_STEP=0 skips it)"
    if RSS_UPSTREAM=$UPSTREAM_ADDR PORTCULLIS_BIN=$PORTCULLIS_BIN PERF_PORT_BASE=$NEXT_PORT PROXY_CPU=$PROXY_CPU \
        LOAD_CPU=$LOAD_CPU READY_TIMEOUT=$READY_TIMEOUT NODE=$NODE RSS_LOG_DIR=$WORK/logs/rss \
        "$PERF_DIR/rss.sh" >"$WORK/rss.md"; then
        :
    else
        log "WARNING: perf/rss.sh failed; see $OUT_DIR/logs/rss/"
        printf '## Memory\n\n**perf/rss.sh failed** (logs in `perf/out/logs/rss/`); no memory figure in this run.\n' >"$WORK/rss.md"
    fi
}

main() {
    local name i
    SELECTED=()
    if [[ -n $PERF_TARGETS ]]; then
        for name in $PERF_TARGETS; do
            [[ -n ${TARGET_STARTER[$name]+x} ]] || die "unknown target '$name' (known: ${ALL_TARGETS[*]})"
        done
        for name in "${ALL_TARGETS[@]}"; do
            [[ " $PERF_TARGETS " == *" $name "* ]] && SELECTED+=("$name")
        done
    else
        SELECTED=("${ALL_TARGETS[@]}")
    fi

    ensure_tools
    [[ $(nproc) -ge 2 ]] || log "WARNING: fewer than 2 cores; load generator and proxies share a core"

    if [[ $UPSTREAM == fast ]]; then
        log "building the benchmark upstream (perf/upstream, cargo build --release)"
        cargo build --release --quiet --manifest-path "$PERF_DIR/upstream/Cargo.toml" \
            --target-dir "$PERF_DIR/upstream/target" || die "building perf/upstream failed"
    fi
    if [[ " ${SELECTED[*]} " == *" portcullis"* ]]; then
        if [[ -z $PORTCULLIS_BIN ]]; then
            log "building portcullis (cargo build --release)"
            (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
            PORTCULLIS_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/portcullis
        fi
        [[ -x $PORTCULLIS_BIN ]] || die "portcullis binary not found or not executable: $PORTCULLIS_BIN"
        PORTCULLIS_BIN=$(cd "$(dirname "$PORTCULLIS_BIN")" && pwd)/$(basename "$PORTCULLIS_BIN")
    fi

    WORK=$(mktemp -d /tmp/portcullis-perf.XXXXXX)
    mkdir -p "$WORK/logs" "$OUT_DIR"

    # Targets with a probe join the default selection only when the probe passes.
    if [[ -z $PERF_TARGETS ]]; then
        local -a kept=()
        for name in "${SELECTED[@]}"; do
            PROBE_WHY=""
            if [[ -n ${TARGET_PROBE[$name]:-} ]] && ! "${TARGET_PROBE[$name]}"; then
                log "NOTE: leaving out $name: $PROBE_WHY (name it in PERF_TARGETS to force it)"
                SKIPPED_NOTES+=("\`$name\` was left out: $PROBE_WHY")
                continue
            fi
            kept+=("$name")
        done
        SELECTED=("${kept[@]}")
    fi

    RAW=$WORK/raw.tsv
    printf 'round\ttarget\trps\tp50_ms\tp99_ms\trequests\tnon2xx\tconnect_err\tread_err\twrite_err\ttimeouts\tproxy_core_busy_pct\tproxy_core_us_per_req\tbackground_seen\n' >"$RAW"

    start_upstream
    for name in "${SELECTED[@]}"; do
        "${TARGET_STARTER[$name]}" "$name"
    done

    local -a extra
    for name in "${SELECTED[@]}"; do
        eval "extra=(${TARGET_WRK[$name]})"
        warm_up "$name" "${TARGET_URL[$name]}" "${extra[@]}"
        [[ -z ${TARGET_CHECK[$name]:-} ]] || "${TARGET_CHECK[$name]}" "$name"
    done
    check_all_alive

    LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
    local est=$(( ${#SELECTED[@]} * ROUNDS * (DURATION + 1) ))
    log "measuring ${#SELECTED[@]} targets x $ROUNDS rounds x ${DURATION}s (about $((est / 60)) min $((est % 60)) s)"
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for name in "${SELECTED[@]}"; do
            eval "extra=(${TARGET_WRK[$name]})"
            measure "$name" "${TARGET_URL[$name]}" "${extra[@]}"
            ((W_NON2XX == 0)) || log "WARNING: $name answered $W_NON2XX non-2xx/3xx responses in round $ROUND (see $OUT_DIR/logs/wrk-r$ROUND-$name.txt)"
            check_all_alive
            [[ -z ${TARGET_CHECK[$name]:-} ]] || "${TARGET_CHECK[$name]}" "$name"
            sleep 1
        done
    done

    if [[ -n $INTROSPECT_ADDR ]]; then
        INTROSPECT_STATS=$(curl -sS --max-time 5 "http://$INTROSPECT_ADDR/stats" 2>/dev/null) || INTROSPECT_STATS=unavailable
    fi
    if [[ -n $IDP_ADDR ]]; then
        IDP_STATS=$(curl -sS --max-time 5 "http://$IDP_ADDR/stats" 2>/dev/null) || IDP_STATS=unavailable
    fi
    run_etcd_propagation_step
    run_rss_step

    report >"$WORK/report.md"
    cp "$RAW" "$OUT_DIR/latest-raw.tsv"
    cp "$WORK/report.md" "$OUT_DIR/latest.md"
    cp "$WORK/report.md" "$OUT_DIR/$(date -u +%Y%m%dT%H%M%SZ).md"

    # Anything a proxy said at warn/error level while under load is worth a look.
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        if grep -qiE 'error|warn|panic|alert|emerg|crit' "$WORK/logs/${PID_NAMES[$i]}.log" 2>/dev/null; then
            log "NOTE: ${PID_NAMES[$i]} logged warnings/errors; see $OUT_DIR/logs/${PID_NAMES[$i]}.log"
        fi
    done
    echo
    cat "$WORK/report.md"
    log "report written to $OUT_DIR/latest.md"
}

main "$@"
