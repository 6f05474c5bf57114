#!/usr/bin/env bash
# Image write benchmark: the agent's writer (kiln::agent::image, driven by examples/image_write.rs,
# verifying the sha256 of the download) against `curl URL | zstd -d | dd of=FILE bs=4M
# conv=fsync` for the same zstd image, served by python3 -m http.server on 127.0.0.1, written to a
# file on the same disk. Two images: "dense" (1 GiB of /usr content, few zero blocks) and
# "sparse" (3 GiB with 512 MiB of that content at four offsets, like the 3 GiB OS image with
# 1.1 GiB used). Each figure is the best of 3 runs; rate = image bytes / wall time.
# Usage: bash tests/bench/image-write.sh   (needs curl, zstd, python3; installs zstd/curl if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v zstd >/dev/null || need+=(zstd)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --quiet --example image_write
WRITER=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/image_write
WORK=$(mktemp -d /var/tmp/kiln-image-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "building images in $WORK" >&2
tar cf - /usr/lib /usr/share 2>/dev/null | head -c 1G > "$WORK/dense.raw" || true
truncate -s 3G "$WORK/sparse.raw"
for i in 0 1 2 3; do
    dd if="$WORK/dense.raw" of="$WORK/sparse.raw" bs=4M count=32 skip=$((i * 32)) seek=$((i * 192 + 7)) \
        conv=notrunc status=none
done
for img in dense sparse; do zstd -q -3 -T0 -f "$WORK/$img.raw" -o "$WORK/$img.raw.zst"; done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$WORK" "$port" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

# Runs "$@" three times after removing the target; prints the best wall time in seconds.
best_of_3() {
    local best=
    for _ in 1 2 3; do
        rm -f "$WORK/target"; sync
        local t0 t1; t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1
        t1=$(date +%s.%N)
        best=$(python3 -c "b='$best'; t=$t1-$t0; print(t if not b or t < float(b) else b)")
    done
    echo "$best"
}
pipeline() { curl -sf "$1" | zstd -d -q | dd of="$WORK/target" bs=4M conv=fsync status=none; }
agent() { "$WRITER" "$1" "$WORK/target" "sha256:$2"; }

printf '%-7s %9s %9s %14s %14s %6s %12s\n' image size zst "curl|zstd|dd" "kiln agent" ratio "kiln alloc"
for img in dense sparse; do
    url="http://127.0.0.1:$port/$img.raw.zst"
    size=$(stat -c %s "$WORK/$img.raw")
    zsize=$(stat -c %s "$WORK/$img.raw.zst")
    sum=$(sha256sum "$WORK/$img.raw.zst" | cut -d' ' -f1)
    t_pipe=$(best_of_3 pipeline "$url")
    t_kiln=$(best_of_3 agent "$url" "$sum")
    "$WRITER" "$url" "$WORK/target" "sha256:$sum" >/dev/null 2>&1
    cmp -s "$WORK/target" "$WORK/$img.raw" || { echo "$img: the agent's copy differs" >&2; exit 1; }
    alloc=$(($(stat -c %b "$WORK/target") * 512 >> 20))
    python3 - "$img" "$size" "$zsize" "$t_pipe" "$t_kiln" "$alloc" <<'PY'
import sys
img, size, zsize, tp, tk, alloc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
mb = lambda t: f"{size / t / 1e6:.0f} MB/s"
print(f"{img:<7} {size >> 20:>5} MiB {zsize >> 20:>5} MiB {mb(tp):>14} {mb(tk):>14} {tp / tk:>5.2f}x {alloc:>8} MiB")
PY
done
