#!/usr/bin/env bash
# The rack simulator benchmark (docs/BENCHMARKS.md): tests/sim_rack.rs in a release build at
# 134 and 1000 nodes (or the sizes given as arguments) — `kiln lab up --sim`, `kiln
# deploy-servers` with the OpenStack catalog until every node is active with services healthy,
# then `kiln reset --all` — printing wall time per run, per-node phase percentiles, the daemon's
# peak RSS and CPU seconds. Zero simulated delays (`--timing fast`). Runs as root (namespaces).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
((${#sizes[@]})) || sizes=(134 1000)
cargo build --release --locked --bins >/dev/null
for nodes in "${sizes[@]}"; do
    echo "== $nodes simulated nodes"
    KILN_SIM_NODES=$nodes cargo test --release --locked --test sim_rack -- --nocapture 2>&1 |
        grep -E '^(lab up|deploy-servers|reset --all|daemon|SIM REPORT)|panicked|test result'
done
