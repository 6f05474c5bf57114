# Process helpers shared by tests/bench/ironic.sh and tests/bench/ironic-deploy.sh (sourced):
# daemons in sessions of their own, registered in PIDS for the caller's clean-up.
# Needs $PY (a python3) for free_port.

PIDS=()

log() { printf '== %s\n' "$*" >&2; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start LOG CMD...: runs CMD in its own session (registered for clean-up); its pid in LAST_PID.
start() {
    local log=$1; shift
    setsid "$@" >"$log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop PID: TERM the process group, wait, KILL.
stop() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# stop_all: every registered daemon's process group, TERM first, KILL after 5 s (for EXIT traps).
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do
        # Each daemon runs in a session of its own (setsid): end its whole process group.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
}

# wait_http URL [CURL ARGS...]: until it answers 2xx (60 s).
wait_http() {
    local url=$1; shift
    for _ in $(seq 600); do
        if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $url" >&2
    return 1
}
