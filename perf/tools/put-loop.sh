#!/usr/bin/env bash
# put-loop.sh ADMIN_PORT KEY_FILE FLAG LOG UPSTREAM — while FLAG exists, PUT one Admin API route
# (`churn`, alternating between two uris) about 10 times a second, one line per answer status
# in LOG. perf/run.sh creates FLAG only while the target it belongs to is measured.
set -u
port=$1 key_file=$2 flag=$3 out=$4 upstream=$5
key=$(<"$key_file")
i=0
while :; do
    if [[ -e $flag ]]; then
        curl -sS -o /dev/null -w '%{http_code}\n' --max-time 2 -X PUT \
            "http://127.0.0.1:$port/apisix/admin/routes/churn" -H "X-API-KEY: $key" \
            -d "{\"uri\": \"/churn/$((i % 2))\", \"upstream\": {\"nodes\": {\"$upstream\": 1}}}" >>"$out" 2>&1
        i=$((i + 1))
    fi
    sleep 0.075
done
