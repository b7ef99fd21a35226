#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind (cachegrind, no cache simulation):
# for A/B pairs whose difference is smaller than this 2-core VM's wrk noise (±10 % from round to
# round). An instruction count does not depend on what else the machine is doing, so a 1 %
# difference shows as 1 %. It covers the proxy's own code only (not the kernel's share of a
# request, which the pairs here do not change); wrk (perf/run.sh) remains the measure of the
# whole proxy.
#
#   perf/instructions.sh                      # metrics on against off: no auth, and a JWT route
#   REQUESTS="2000 12000" RUNS=5 perf/instructions.sh
#   PORTCULLIS_BIN=target/release/portcullis perf/instructions.sh
#
# A measurement serves the two request counts of REQUESTS on one keep-alive connection (curl's
# URL globbing) in two proxy runs; the difference of the two totals divided by the difference of
# the counts is the cost of one request, with start-up and shutdown cancelled out. The event
# loop's wake-ups still depend on timing (about ±1.5 % between measurements), so each variant is
# measured RUNS times, variants alternating, and the median is reported with every value.
# Output: a Markdown table on stdout and in perf/out/instructions-latest.md.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$PERF_DIR/.." && pwd)
OUT_DIR=$PERF_DIR/out
PORTCULLIS_BIN=${PORTCULLIS_BIN:-}
REQUESTS=${REQUESTS:-"2000 12000"}
RUNS=${RUNS:-5}
UPSTREAM_BIN=$PERF_DIR/upstream/target/release/perf-upstream
READY_TIMEOUT=${READY_TIMEOUT:-60}
KEEP_WORK=${KEEP_WORK:-0}           # 1: keep the configs, logs and cachegrind files (for cg_annotate)
AUTHS=${AUTHS:-"none jwt"}          # which routes: none (no auth), jwt (a cached RS256 token)

log() { printf '[instructions %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[instructions] FATAL: %s\n' "$*" >&2; exit 1; }

read -r N1 N2 <<<"$REQUESTS"
[[ ${N1:-} =~ ^[0-9]+$ && ${N2:-} =~ ^[0-9]+$ ]] && ((N2 > N1 && N1 >= 1)) ||
    die "REQUESTS must be two counts, the second larger (got '$REQUESTS')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1)) || die "RUNS must be a positive integer (got '$RUNS')"
for tool in valgrind curl openssl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (Debian: apt-get install $tool)"
done

if [[ -z $PORTCULLIS_BIN ]]; then
    log "building portcullis (release)"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
    PORTCULLIS_BIN=$REPO/target/release/portcullis
fi
[[ -x $PORTCULLIS_BIN ]] || die "no portcullis binary at $PORTCULLIS_BIN"
if [[ ! -x $UPSTREAM_BIN ]]; then
    log "building perf/upstream"
    (cd "$PERF_DIR/upstream" && cargo build --release --quiet) || die "building perf/upstream failed"
fi

WORK=$(mktemp -d /tmp/portcullis-instructions.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_WORK == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ok URL PID NAME [curl args] — until URL answers 200, or die naming the log.
wait_ok() {
    local url=$1 pid=$2 name=$3 deadline=$((SECONDS + READY_TIMEOUT))
    shift 3
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true) == 200 ]]; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before answering (log: $WORK/$name.log)"
        ((SECONDS < deadline)) || die "$name did not answer 200 at $url within ${READY_TIMEOUT}s"
        sleep 0.2
    done
}

# A JWT route's key and one token for it (RS256, a year's lifetime): every request after the
# first is a token-cache hit, as on the jwt-pool rows of perf/run.sh.
ISSUER=https://idp.perf
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/key.pem" 2>/dev/null ||
    die "openssl could not make an RSA key"
openssl pkey -in "$WORK/key.pem" -pubout -out "$WORK/pub.pem" 2>/dev/null
now=$(date +%s)
signing_input="$(printf '{"alg":"RS256","typ":"JWT"}' | b64url).$(printf '{"iss":"%s","sub":"perf-user","aud":"perf","iat":%d,"exp":%d}' "$ISSUER" "$now" $((now + 31536000)) | b64url)"
TOKEN="$signing_input.$(printf '%s' "$signing_input" | openssl dgst -sha256 -sign "$WORK/key.pem" -binary | b64url)"
PUBLIC_KEY=$(awk '{printf "%s\\n", $0}' "$WORK/pub.pem")

UP_PORT=$(free_port)
"$UPSTREAM_BIN" "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$UP_PORT/" "$!" upstream

# count VARIANT METRICS AUTH REQUESTS RUN — total user-space instructions of one proxy run that
# serves REQUESTS requests (AUTH: none or jwt), printed on stdout.
count() {
    local variant=$1 metrics=$2 auth=$3 n=$4 dir=$WORK/$1-$4-$5 port status_port admin_port pid
    local plugins="" header=()
    mkdir -p "$dir/data"
    if [[ $auth == jwt ]]; then
        plugins="    plugins:
      openid-connect:
        client_id: perf
        client_secret: perf-secret
        discovery: http://127.0.0.1:9/.well-known/openid-configuration
        bearer_only: true
        public_key: \"$PUBLIC_KEY\"
        token_signing_alg_values_expected: RS256
        claim_validator: { issuer: { valid_issuers: [\"$ISSUER\"] } }"
        header=(-H "Authorization: Bearer $TOKEN")
    fi
    port=$(free_port) status_port=$(free_port) admin_port=$(free_port)
    cat >"$dir/config.yaml" <<EOF
listen: "127.0.0.1:$port"
workers: 1
cpu_affinity: false
data_dir: "$dir/data"
admin: { listen: "127.0.0.1:$admin_port" }
status: { listen: "127.0.0.1:$status_port", metrics: $metrics }
runtime: { driver: epoll }   # valgrind does not model io_uring's shared rings
log: { access: false }
routes:
  - id: "1"
    uri: /*
    upstream: { type: roundrobin, nodes: { "127.0.0.1:$UP_PORT": 1 } }
$plugins
EOF
    "$PORTCULLIS_BIN" -c "$dir/config.yaml" check >"$dir/check.log" 2>&1 ||
        die "portcullis refuses $dir/config.yaml: $(cat "$dir/check.log")"
    RUST_LOG=warn valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$dir/cg.out" \
        "$PORTCULLIS_BIN" -c "$dir/config.yaml" >"$dir/proxy.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_ok "http://127.0.0.1:$port/warm" "$pid" "$variant-$n" "${header[@]}"
    # One connection, n requests (the warm-up request above is counted in both runs alike).
    curl -sf "${header[@]}" "http://127.0.0.1:$port/r[1-$n]" >/dev/null ||
        die "$variant: curl failed while sending $n requests (log: $dir/proxy.log)"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local total
    total=$(awk '/^summary:/ {print $2}' "$dir/cg.out" 2>/dev/null || true)
    [[ $total =~ ^[0-9]+$ ]] || die "$variant: no instruction total in $dir/cg.out (log: $dir/proxy.log)"
    echo "$total"
}

# per_request VARIANT METRICS AUTH RUN — one measurement: instructions per request.
per_request() {
    local a b
    a=$(count "$1" "$2" "$3" "$N1" "$4")
    b=$(count "$1" "$2" "$3" "$N2" "$4")
    echo $(((b - a) / (N2 - N1)))
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

report="## User-space instructions per request (cachegrind, epoll driver, $RUNS runs of $N1 and $N2 requests)

| route | metrics on: median (runs) | metrics off: median (runs) | on − off | on / off |
|---|---:|---:|---:|---:|"
for auth in $AUTHS; do
    on=() off=()
    for ((run = 1; run <= RUNS; run++)); do
        log "$auth, run $run of $RUNS: metrics on, then off"
        on+=("$(per_request "$auth-on" true "$auth" "$run")")
        off+=("$(per_request "$auth-off" false "$auth" "$run")")
    done
    m_on=$(median "${on[@]}") m_off=$(median "${off[@]}")
    ratio=$(awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "%.4f", a / b}')
    label=$([[ $auth == jwt ]] && echo "JWT (RS256, cached)" || echo "no auth")
    report+=$'\n'"| $label | $m_on (${on[*]}) | $m_off (${off[*]}) | $((m_on - m_off)) | $ratio |"
done
mkdir -p "$OUT_DIR"
printf '%s\n' "$report" | tee "$OUT_DIR/instructions-latest.md"
