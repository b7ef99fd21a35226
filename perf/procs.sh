# Helpers shared by perf/run.sh and perf/rss.sh: processes, ports, templates. Sourced; the caller
# defines `log`, `die`, WORK, PIDS, PID_NAMES and PORT_BASE first.

# 0 if the process exists and is not a zombie.
is_alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

stop_pid() {
    local pid=$1 name=$2 children i
    children=$(pgrep -P "$pid" 2>/dev/null || true)
    if is_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do is_alive "$pid" || break; sleep 0.1; done
        if is_alive "$pid"; then
            log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    # e.g. nginx workers, if their master was killed hard
    for pid in $children; do
        if is_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

# start_pinned NAME CPU CMD… — run CMD pinned to CPU in the background, logging to
# $WORK/logs/NAME.log; its pid goes to LAST_PID and to the list cleanup stops.
# stop_all_keeping_logs DIR — stop every process this script started, newest first, and move
# $WORK/logs to DIR (replacing what was there). Returns 1 when there was no work dir.
stop_all_keeping_logs() {
    local dir=$1 i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}" "${PID_NAMES[$i]}"
    done
    [[ -n $WORK && -d $WORK ]] || return 1
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r "$WORK"/logs/. "$dir/" 2>/dev/null
    rm -rf "$WORK"
}

start_pinned() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    PID_NAMES+=("$name")
    log "started $name (pid $LAST_PID, cpu $cpu): $(printf '%s ' "$@" | cut -c1-160)"
}

# ---------------------------------------------------------------- ports and templates
USED_PORTS=" "
NEXT_PORT=$PORT_BASE
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# alloc_port — sets PORT to a free loopback port not yet handed out.
alloc_port() {
    while port_busy "$NEXT_PORT" || [[ $USED_PORTS == *" $NEXT_PORT "* ]]; do
        NEXT_PORT=$((NEXT_PORT + 1))
        ((NEXT_PORT < 65000)) || die "no free port found from $PORT_BASE up"
    done
    PORT=$NEXT_PORT
    USED_PORTS+="$PORT "
    NEXT_PORT=$((NEXT_PORT + 1))
}

# render TEMPLATE DEST KEY=VALUE... — replace @KEY@ with VALUE.
render() {
    local src=$1 dst=$2 kv key val content
    shift 2
    content=$(<"$src")
    for kv in "$@"; do
        key=${kv%%=*}
        val=${kv#*=}
        content=${content//"@$key@"/"$val"}  # quoted: no & expansion (bash 5.2)
    done
    [[ $content != *@[A-Z_]*@* ]] || die "unrendered placeholder left in $dst: $(grep -o '@[A-Z_]*@' <<<"$content" | sort -u | tr '\n' ' ')"
    printf '%s\n' "$content" >"$dst"
}
