# Shared by the benchmark scripts: a server namespace with bridge br0 (10.78.0.1/16) and a client
# namespace cabled to it (10.78.0.2/16), removed on exit. Source it; it sets NS, CL and WORK.
NS=kbench-srv-$$ CL=kbench-cli-$$
WORK=$(mktemp -d /tmp/kiln-bench.XXXXXX)
server_pid=
lab_cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    ip netns del "$NS" 2>/dev/null; ip netns del "$CL" 2>/dev/null; rm -rf "$WORK"
}
trap lab_cleanup EXIT
ip netns add "$NS"; ip netns add "$CL"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 10.78.0.1/16 dev br0
ip -n "$NS" link set br0 up
ip -n "$NS" link add v0 type veth peer name eth0 netns "$CL"
ip -n "$NS" link set v0 master br0 up
ip -n "$CL" addr add 10.78.0.2/16 dev eth0
ip -n "$CL" link set eth0 up
ip -n "$CL" link set lo up

stop_server() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=; }

# Waits until the daemon in $1 wrote its API address.
wait_kiln() { for _ in $(seq 100); do [ -s "$1/api-url" ] && break; sleep 0.1; done; sleep 0.5; }

# Installs missing Debian packages without letting their scripts start services.
install_peers() {
    (($#)) || return 0
    local made=0
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    [ "$made" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}
