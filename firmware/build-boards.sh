#!/usr/bin/env bash
# Builds both board images in release and prints their flash and RAM sizes.
#
#   firmware/build-boards.sh          build + sizes
#   firmware/build-boards.sh --qemu   also run the QEMU image with a throwaway dev key and verify
#                                     its frames (needs qemu-system-arm)
#
# Each board is its own Cargo workspace with its own target dir (firmware/boards/*/target), so
# this never touches the main workspace's build lock; CARGO_TARGET_DIR is ignored for the boards.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
boards=(qemu-mps2-an386 nrf52840-dk)
target=thumbv7em-none-eabihf
run_qemu=0
[[ "${1:-}" == "--qemu" ]] && run_qemu=1

say() { printf '+ %s\n' "$*" >&2; }

cd "$here/boards/qemu-mps2-an386" # the toolchain pinned by the repo's rust-toolchain.toml
if ! rustup target list --installed | grep -qx "$target"; then
    say rustup target add "$target"
    rustup target add "$target"
fi
sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
llvm_size="$sysroot/lib/rustlib/$host/bin/llvm-size"
if [[ ! -x "$llvm_size" ]]; then
    say rustup component add llvm-tools
    rustup component add llvm-tools
fi

for b in "${boards[@]}"; do
    say "cd firmware/boards/$b && cargo build --release --target-dir target"
    (cd "$here/boards/$b" && cargo build --release --target-dir target)
done

# Flash = .vector_table + .text + .rodata + .data (initializers); RAM = .data + .bss + .uninit
# (the stack comes on top, from the end of RAM down).
printf '\n%-20s %8s %8s %8s %8s %8s %10s %8s\n' image .vectors .text .rodata .data .bss "flash" "RAM"
for b in "${boards[@]}"; do
    elf="$here/boards/$b/target/$target/release/warden-board-$b"
    "$llvm_size" -A "$elf" | awk -v name="$b" '
        $1 == ".vector_table" { v = $2 } $1 == ".text" { t = $2 } $1 == ".rodata" { r = $2 }
        $1 == ".data" { d = $2 } $1 == ".bss" { s = $2 } $1 == ".uninit" { u = $2 }
        END { printf "%-20s %8d %8d %8d %8d %8d %10d %8d\n", name, v, t, r, d, s, v + t + r + d, d + s + u }'
done

if [[ $run_qemu == 1 ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    cd "$here/.."
    say cargo run -q -p warden-firmware --example make_key_blob -- qemu-ci "$tmp/qemu-ci.keyblob"
    cargo run -q -p warden-firmware --example make_key_blob -- qemu-ci "$tmp/qemu-ci.keyblob" >/dev/null
    cmd=(qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -monitor none
        -semihosting-config enable=on,target=native -serial "file:$tmp/frames.bin"
        -device "loader,file=$tmp/qemu-ci.keyblob,addr=0x003FF000"
        -kernel "$here/boards/qemu-mps2-an386/target/$target/release/warden-board-qemu-mps2-an386")
    say "${cmd[@]}"
    timeout 60 "${cmd[@]}"
    say cargo run -q -p warden-firmware --example check_frames -- "$tmp/frames.bin" "$tmp/qemu-ci.keyblob"
    cargo run -q -p warden-firmware --example check_frames -- "$tmp/frames.bin" "$tmp/qemu-ci.keyblob"
fi
