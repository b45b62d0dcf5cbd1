#!/usr/bin/env bash
# Builds the vmsave test guest (a multiboot kernel for QEMU's -kernel; 32-bit entry, 64-bit code) into
# infra/guest/build/guest.elf with Debian's gcc/binutils. Idempotent: rebuilds only when a
# source is newer than the kernel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build"
elf="$out/guest.elf"
src=("$here/boot.S" "$here/guest.c" "$here/link.ld" "$here/build.sh")
if [ -f "$elf" ]; then
  fresh=1
  for f in "${src[@]}"; do [ "$f" -nt "$elf" ] && fresh=0; done
  [ $fresh -eq 1 ] && exit 0
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cflags=(-m64 -mno-red-zone -mgeneral-regs-only -mcmodel=small -ffreestanding -nostdlib -fno-pic -fno-pie -fno-stack-protector -fno-builtin -O2 -Wall -Wextra -Werror)
gcc "${cflags[@]}" -c "$here/guest.c" -o "$tmp/guest.o"
as --64 "$here/boot.S" -o "$tmp/boot.o"
ld -m elf_x86_64 -nostdlib -static --no-warn-rwx-segments -z max-page-size=4096 -T "$here/link.ld" -o "$tmp/guest64.elf" "$tmp/boot.o" "$tmp/guest.o"
# QEMU's multiboot loader takes only 32-bit ELF: same bytes, 32-bit container.
objcopy -O elf32-i386 "$tmp/guest64.elf" "$tmp/guest.elf"
mv "$tmp/guest.elf" "$elf"
echo "[guest] built $elf"
