# Helpers for healthcheck_listen and healthcheck_port (sourced; bash).

# socket_inodes REGEX: the socket inodes held by processes whose command line matches REGEX
# (the calling healthcheck and its parents are skipped), one per line.
socket_inodes() {
    local regex=$1 dir pid cmdline fd link
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [ "$pid" = "$$" ] && continue
        [ "$pid" = "$PPID" ] && continue
        cmdline=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
        [[ "$cmdline" =~ $regex ]] || continue
        [[ "$cmdline" == *healthcheck_* ]] && continue
        for fd in "$dir"/fd/*; do
            link=$(readlink "$fd" 2>/dev/null) || continue
            case "$link" in socket:\[*\]) link=${link#socket:[}; echo "${link%]}" ;; esac
        done
    done | sort -u
}

# tcp_sockets STATE PORT local|remote: inodes of TCP sockets in STATE (hex: 0A listen,
# 01 established) whose local or remote port is PORT, from /proc/net/tcp and tcp6.
tcp_sockets() {
    local state=$1 port=$2 side=$3
    awk -v st="$state" -v port="$(printf '%04X' "$port")" -v side="$side" '
        FNR > 1 && $4 == st {
            addr = (side == "local") ? $2 : $3
            sub(/.*:/, "", addr)
            if (toupper(addr) == port) print $10
        }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
