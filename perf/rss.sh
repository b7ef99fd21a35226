#!/usr/bin/env bash
# Memory of Portcullis with a full token cache: start it (1 worker, the public_key JWT route,
# the default per-core token cache), send RSS_TOKENS distinct valid tokens once each, and report
# VmRSS and VmHWM (from /proc/PID/status) before and after. Goal: <= RSS_GOAL_MB after.
#
#   perf/rss.sh                                   # builds with cargo build --release if needed
#   PORTCULLIS_BIN=target/release/portcullis perf/rss.sh
#   RSS_TOKENS=20000 perf/rss.sh                  # fewer tokens (a quick check)
#
# perf/run.sh runs it after its rounds (RSS_STEP=0 skips that) and appends its section to the
# report. Output: a Markdown section on stdout (also in perf/out/rss-latest.md when run on its
# own); progress on stderr; logs in RSS_LOG_DIR (default perf/out/rss-logs).
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$PERF_DIR/.." && pwd)
OUT_DIR=$PERF_DIR/out
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

RSS_TOKENS=${RSS_TOKENS:-100000}      # distinct tokens sent, once each
RSS_ALG=${RSS_ALG:-ES256}             # ES256 (fast to mint) or RS256 (tests/fixtures/rsa1, ~40 s to mint 100,000)
RSS_CONCURRENCY=${RSS_CONCURRENCY:-50}
RSS_GOAL_MB=${RSS_GOAL_MB:-100}
RSS_UPSTREAM=${RSS_UPSTREAM:-}        # host:port of an upstream answering 200 "hello world"; empty: start nginx
RSS_LOG_DIR=${RSS_LOG_DIR:-$OUT_DIR/rss-logs}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PERF_PORT_BASE:-18280}
READY_TIMEOUT=${READY_TIMEOUT:-30}
PORTCULLIS_RUST_LOG=${PORTCULLIS_RUST_LOG:-warn}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-}
NODE=${NODE:-node}

for v in RSS_TOKENS RSS_CONCURRENCY RSS_GOAL_MB PORT_BASE READY_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "rss.sh: $v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
((RSS_TOKENS >= 1)) || { echo "rss.sh: RSS_TOKENS must be >= 1" >&2; exit 2; }
[[ $RSS_ALG == ES256 || $RSS_ALG == RS256 ]] || { echo "rss.sh: RSS_ALG must be ES256 or RS256" >&2; exit 2; }

log() { printf '[rss %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\n[rss] FATAL: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes
WORK=""
PIDS=()
PID_NAMES=()

# shellcheck source=perf/procs.sh
source "$PERF_DIR/procs.sh"

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if stop_all_keeping_logs "$RSS_LOG_DIR" && ((rc != 0)); then
        log "logs are in $RSS_LOG_DIR/"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# status_code URL [curl args...] — prints the HTTP status (or "none").
status_code() {
    local url=$1
    shift
    curl -sS -o "$WORK/body" -w '%{http_code}' --max-time 5 "$@" "$url" 2>/dev/null || echo none
}

wait_ok() {
    local name=$1 url=$2 pid=$3 deadline=$((SECONDS + READY_TIMEOUT)) code=none
    shift 3
    while ((SECONDS < deadline)); do
        is_alive "$pid" || { tail -n 40 "$WORK/logs/$name.log" >&2 || true; die "$name (pid $pid) exited before it answered (log above)"; }
        code=$(status_code "$url" "$@")
        if [[ $code == 200 ]] && grep -q 'hello world' "$WORK/body"; then
            log "$name answers 200 at $url"
            return 0
        fi
        sleep 0.2
    done
    tail -n 40 "$WORK/logs/$name.log" >&2 || true
    die "$name did not answer 200 with the upstream's body at $url within ${READY_TIMEOUT}s (last status: $code)"
}

# mem PID — prints "VmRSS VmHWM" in kB.
mem() {
    awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } END { print r + 0, h + 0 }' "/proc/$1/status"
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- main
main() {
    local t0 dir admin_port status_port url pid pubkey tokens first tampered code before after result nsent
    local rss0 hwm0 rss1 hwm1 alg_args=()
    for bin in curl taskset "$NODE"; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin is missing (perf/run.sh installs what it needs; for node: apt-get install nodejs)"
    done
    [[ -n $RSS_UPSTREAM ]] || command -v nginx >/dev/null 2>&1 || die "nginx is missing (needed for the upstream when RSS_UPSTREAM is empty)"
    if [[ -z $PORTCULLIS_BIN ]]; then
        log "building portcullis (cargo build --release)"
        (cd "$REPO" && cargo build --release) >&2 || die "cargo build --release failed"
        PORTCULLIS_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/portcullis
    fi
    [[ -x $PORTCULLIS_BIN ]] || die "portcullis binary not found or not executable: $PORTCULLIS_BIN"

    WORK=$(mktemp -d /tmp/portcullis-rss.XXXXXX)
    mkdir -p "$WORK/logs"

    # Tokens: distinct, valid, the same claims as run.sh's pool.
    tokens=$WORK/tokens.txt
    if [[ $RSS_ALG == ES256 ]]; then
        pubkey=$WORK/ec.pub.pem
        alg_args=(--alg ES256 --gen-key "$pubkey")
    else
        pubkey=$REPO/tests/fixtures/rsa1.pub.pem
        alg_args=(--alg RS256 --key "$REPO/tests/fixtures/rsa1.pk8.der")
    fi
    t0=$SECONDS
    log "minting $RSS_TOKENS distinct $RSS_ALG tokens"
    "$NODE" "$PERF_DIR/tools/mint-tokens.js" "${alg_args[@]}" --count "$RSS_TOKENS" --out "$tokens" >"$WORK/logs/mint.log" 2>&1 ||
        { cat "$WORK/logs/mint.log" >&2; die "minting tokens failed (above)"; }
    (($(sort -u "$tokens" | wc -l) == RSS_TOKENS)) || die "the minted tokens are not $RSS_TOKENS distinct ones"
    log "minted in $((SECONDS - t0)) s ($(awk '{ s += length($0) } END { printf "%.0f", s / NR }' "$tokens") characters each on average)"
    first=$(head -n1 "$tokens")
    tampered=$(<"$tokens.tampered")

    # Upstream.
    if [[ -z $RSS_UPSTREAM ]]; then
        dir=$WORK/upstream
        mkdir -p "$dir"
        alloc_port
        RSS_UPSTREAM=127.0.0.1:$PORT
        render "$PERF_DIR/conf/nginx-upstream.conf.tmpl" "$dir/nginx.conf" DIR="$dir" PORT="$PORT"
        start_pinned upstream "$LOAD_CPU" nginx -p "$dir" -c "$dir/nginx.conf"
        wait_ok upstream "http://$RSS_UPSTREAM/" "$LAST_PID"
    fi

    # Portcullis: the same template as run.sh's portcullis-jwt-pool, default cache.
    dir=$WORK/portcullis
    mkdir -p "$dir/data"
    alloc_port
    admin_port=$PORT
    alloc_port
    status_port=$PORT
    alloc_port
    render "$PERF_DIR/conf/portcullis-jwt.yaml.tmpl" "$dir/config.yaml" DIR="$dir" PORT="$PORT" ADMIN_PORT="$admin_port" \
        STATUS_PORT="$status_port" METRICS=true DRIVER=io_uring UPSTREAM="$RSS_UPSTREAM" ALG="$RSS_ALG" ISSUER=https://idp.perf \
        PUBLIC_KEY="$(awk '{ printf "%s\\n", $0 }' "$pubkey")" \
        PER_CORE="# per_core: the default token cache (100,000 verified tokens per core)"
    "$PORTCULLIS_BIN" -c "$dir/config.yaml" check >"$WORK/logs/config-test.log" 2>&1 ||
        { cat "$WORK/logs/config-test.log" >&2; die "portcullis refuses its config (above)"; }
    url=http://127.0.0.1:$PORT/
    start_pinned portcullis "$PROXY_CPU" env RUST_LOG="$PORTCULLIS_RUST_LOG" "$PORTCULLIS_BIN" -c "$dir/config.yaml"
    pid=$LAST_PID
    wait_ok portcullis "$url" "$pid" -H "Authorization: Bearer $first"
    code=$(status_code "$url" -H "Authorization: Bearer $tampered")
    [[ $code == 401 ]] || die "portcullis answered $code instead of 401 to a tampered token"
    log "portcullis answers 401 to a tampered token"
    sleep 1
    read -r rss0 hwm0 < <(mem "$pid")
    log "before: VmRSS $(mb "$rss0") MB, VmHWM $(mb "$hwm0") MB"

    log "sending $RSS_TOKENS distinct tokens once each ($RSS_CONCURRENCY in flight, node on core $LOAD_CPU)"
    t0=$SECONDS
    result=$(taskset -c "$LOAD_CPU" "$NODE" "$PERF_DIR/tools/send-tokens.js" "$url" "$tokens" "$RSS_CONCURRENCY" 2>"$WORK/logs/send.log") ||
        { cat "$WORK/logs/send.log" >&2; die "not every token was answered 200: ${result:-no result}"; }
    log "sent in $((SECONDS - t0)) s: $result"
    is_alive "$pid" || die "portcullis died while the tokens were sent"
    sleep 1
    read -r rss1 hwm1 < <(mem "$pid")
    log "after: VmRSS $(mb "$rss1") MB, VmHWM $(mb "$hwm1") MB"
    nsent=$RSS_TOKENS

    local cached=$nsent per_token met
    ((cached <= 100000)) || cached=100000   # the default per_core.token_cache_entries
    per_token=$(awk -v a="$rss0" -v b="$rss1" -v n="$cached" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    met=$(awk -v k="$rss1" -v g="$RSS_GOAL_MB" 'BEGIN { print (k / 1024 <= g ? "yes" : "**no**") }')

    local md
    md=$(
        echo "## Memory with $nsent distinct tokens cached"
        echo
        echo "- \`perf/rss.sh\`: Portcullis ($("$PORTCULLIS_BIN" --version 2>/dev/null | head -n1), io_uring, 1 worker, pinned to core $PROXY_CPU) with the public_key route of \`portcullis-jwt-pool\` and the default per-core token cache (100,000 entries); $nsent distinct valid $RSS_ALG tokens (~380-byte claims, $(awk '{ s += length($0) } END { printf "%.0f", s / NR }' "$tokens") characters) sent once each by \`perf/tools/send-tokens.js\` ($RSS_CONCURRENCY in flight, keep-alive), every one answered 200; RSS from \`/proc/PID/status\`"
        echo
        echo "| | VmRSS MB | VmHWM MB |"
        echo "|---|---:|---:|"
        echo "| before (started, one token verified) | $(mb "$rss0") | $(mb "$hwm0") |"
        echo "| after $nsent distinct tokens | $(mb "$rss1") | $(mb "$hwm1") |"
        echo
        echo "- growth: $(mb $((rss1 - rss0))) MB, about $per_token bytes per cached token ($cached cached; the cache holds at most 100,000)"
        echo "- goal: VmRSS ≤ $RSS_GOAL_MB MB with 100,000 tokens cached: $met ($(mb "$rss1") MB)"
    )
    printf '%s\n' "$md"
    if [[ $RSS_LOG_DIR == "$OUT_DIR/rss-logs" ]]; then
        mkdir -p "$OUT_DIR"
        printf '%s\n' "$md" >"$OUT_DIR/rss-latest.md"
    fi
}

main "$@"
