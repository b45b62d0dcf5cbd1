/* Multiboot (v1) entry of the vmsave test guest. QEMU's -kernel loader jumps here in 32-bit
 * protected mode (EAX = 0x2BADB002, EBX = multiboot info). We switch to 64-bit long mode with
 * the first 4 GiB identity-mapped in 2 MiB user pages: a guest without paging runs emulated
 * (slowly) under KVM without unrestricted-guest support (nested or paravirtual KVM, e.g. kvm-pvm),
 * which also refuses 32-bit paging. Then we drop to ring 3 for guest_main: kvm-pvm runs a guest's
 * user mode natively but interprets every instruction of a non-PVM guest's ring 0 (~1 M
 * instructions/s: ~80 page writes/s instead of hundreds of thousands). */
	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x00000003          /* page-aligned modules, memory map */
	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .bss
	.align 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pds:	.skip 4 * 4096
stack_bottom:
	.skip 16384
stack_top:
boot_magic: .skip 4
boot_info: .skip 4

	.section .note.GNU-stack, "", @progbits

	.section .text
	.code32
	.globl _start
_start:
	cli
	mov %eax, boot_magic
	mov %ebx, boot_info
	lgdt gdt_desc
	/* pml4[0] -> pdpt; pdpt[0..3] -> pds; pds: 2048 entries of 2 MiB (present, writable, user, large) */
	mov $pdpt, %eax
	or $0x7, %eax
	mov %eax, pml4
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $12, %eax
	add $pds, %eax
	or $0x7, %eax
	mov %eax, pdpt(,%ecx,8)
	inc %ecx
	cmp $4, %ecx
	jne 1b
	xor %ecx, %ecx
2:	mov %ecx, %eax
	shl $21, %eax
	or $0x87, %eax
	mov %eax, pds(,%ecx,8)
	mov %ecx, %eax
	shr $11, %eax
	mov %eax, pds+4(,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jne 2b
	mov $pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x20, %eax                     /* PAE */
	mov %eax, %cr4
	mov $0xC0000080, %ecx              /* EFER */
	rdmsr
	or $0x100, %eax                    /* LME */
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax               /* PG | PE */
	mov %eax, %cr0
	ljmp $0x08, $long64

	.code64
long64:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov $stack_top, %rsp
	/* Drop to ring 3 with interrupts off: guest_main never returns and needs no privilege. */
	mov $0x23, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %fs
	mov %ax, %gs
	mov boot_magic, %edi
	mov boot_info, %esi
	pushq $0x23                       /* SS: user data */
	pushq $stack_top - 8              /* RSP, as after a call */
	pushq $0x2                        /* RFLAGS: IF = 0, IOPL = 0 */
	pushq $0x1B                       /* CS: user code */
	pushq $guest_main                 /* RIP */
	iretq

	.section .rodata
	.align 8
gdt:
	.quad 0
	.quad 0x00AF9A000000FFFF  /* 0x08: 64-bit code */
	.quad 0x00CF92000000FFFF  /* 0x10: data */
	.quad 0x00AFFA000000FFFF  /* 0x18: 64-bit code, DPL 3 */
	.quad 0x00CFF2000000FFFF  /* 0x20: data, DPL 3 */
gdt_desc:
	.word gdt_desc - gdt - 1
	.long gdt
