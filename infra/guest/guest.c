/*
 * vmsave test guest: a freestanding multiboot kernel (64-bit, entered by boot.S) that writes
 * memory forever. boot.S runs this in ring 3: under a KVM that emulates a guest's ring 0 (this
 * machine kind's kvm-pvm interprets every instruction of a non-PVM kernel, ~1 M/s) user code runs
 * natively, and nothing here needs privilege (rdtsc is allowed, no hlt, interrupts stay off).
 *
 * Parameters come from the multiboot command line (QEMU's -append), all optional:
 *   rate=<pages per second, 0 = as fast as possible>   default 1000
 *   share=<percent of RAM above 2 MiB to write, 1..100> default 50
 *   seed=<u32>                                          default 1
 *   tsc_khz=<guest TSC frequency in kHz>  needed by rate (the guest calibrates nothing)
 *   stall=<TSC ticks>  a gap between two loop turns longer than this counts as a stall
 *                      default tsc_khz (1 ms), or 2000000 without tsc_khz
 *
 * Memory (guest-physical, layout shared with packages/testguest/src/layout.ts):
 *   0x100000  this kernel      0x1FF000  heartbeat page      0x200000..  data pages
 * Data page at page frame number p (4 KiB, little-endian u32 words):
 *   w0 'VMSP' magic, w1 p, w2 generation (>= 1), w3 checksum (FNV-1a over w0..w2, w4..w1023),
 *   w4..w1023 xorshift32 stream seeded from (seed, p, generation).
 * Pages are written in passes: write number s (from 0) is page first_pfn + s % npages of
 * generation s / npages + 1. The heartbeat's cursor is set to s before write s starts, so
 * at any instant every write before the cursor is complete and only the page under the
 * cursor may be torn.
 * Heartbeat words 64..1023: 240 slots of 4 words (window w, stalls that ended in it, longest of
 * them lo, hi) for the TSC windows w = tsc >> 27, slot w % 240 (about 12 s of history at 2.6 GHz).
 */
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define PAGE 4096u
#define HB_ADDR 0x1FF000u
#define DATA_START 0x200000u
#define PAGE_MAGIC 0x50534D56u /* "VMSP" */
#define HB_MAGIC 0x42484D56u   /* "VMHB" */

enum {
  HB_MAGIC_W = 0, HB_VERSION, HB_CURSOR, HB_COUNTER, HB_TSC_LO, HB_TSC_HI,
  HB_FIRST_PFN, HB_NPAGES, HB_RATE, HB_SHARE, HB_SEED, HB_TSC_KHZ,
  HB_STALL_LO, HB_STALL_HI, HB_MAXGAP_LO, HB_MAXGAP_HI, HB_STALL_THRESHOLD,
  HB_BOOT_TSC_LO, HB_BOOT_TSC_HI, HB_STALL_COUNT, HB_RAM_TOP,
  HB_WIN_SHIFT = 21, HB_WIN_SLOTS = 22,
  HB_WIN = 64, /* HB_WIN_SLOTS slots of 4 words: window, stalls, longest gap lo, hi */
};
#define WIN_SHIFT 27u  /* a window is 2^27 TSC ticks (~52 ms at 2.6 GHz) */
#define WIN_SLOTS 240u /* (1024 - HB_WIN) / 4 */

static char cmdline[512];
static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}

/* u64 / u32 without libgcc (shift-subtract). */
static u64 udiv64(u64 n, u32 d) {
  u64 q = 0, r = 0;
  for (int i = 63; i >= 0; i--) {
    r = (r << 1) | ((n >> i) & 1);
    if (r >= d) { r -= d; q |= 1ull << i; }
  }
  return q;
}

static u32 param(const char *key, u32 dflt) {
  for (const char *p = cmdline; *p; p++) {
    if (p != cmdline && p[-1] != ' ') continue;
    const char *k = key, *q = p;
    while (*k && *q == *k) { k++; q++; }
    if (*k || *q != '=') continue;
    q++;
    u32 v = 0;
    int any = 0;
    while (*q >= '0' && *q <= '9') { v = v * 10 + (u32)(*q - '0'); q++; any = 1; }
    return any ? v : dflt;
  }
  return dflt;
}

static u32 mix(u32 x) {
  x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
  return x;
}

static u32 fnv(u32 h, u32 w) { return (h ^ w) * 16777619u; }

static void write_page(u32 pfn, u32 gen, u32 seed) {
  volatile u32 *w = (volatile u32 *)(unsigned long)(pfn * PAGE);
  u32 x = mix(seed ^ mix(pfn * 0x9E3779B1u ^ mix(gen * 0x85EBCA77u)));
  if (x == 0) x = 1;
  u32 h = 2166136261u;
  h = fnv(h, PAGE_MAGIC); h = fnv(h, pfn); h = fnv(h, gen);
  for (u32 i = 4; i < PAGE / 4; i++) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    w[i] = x;
    h = fnv(h, x);
  }
  /* The header last: a page stopped mid-write fails its checksum. */
  w[0] = PAGE_MAGIC; w[1] = pfn; w[2] = gen; w[3] = h;
}

void guest_main(u32 magic, u32 mbi_addr) {
  const u32 *mbi = (const u32 *)(unsigned long)mbi_addr;
  u32 ram_top = 32u << 20;
  if (magic == 0x2BADB002u) {
    if (mbi[0] & 1) ram_top = 0x100000u + mbi[2] * 1024u; /* mem_upper, KiB above 1 MiB */
    if (mbi[0] & 4) {
      const char *c = (const char *)(unsigned long)mbi[4];
      u32 i = 0;
      while (c[i] && i < sizeof cmdline - 1) { cmdline[i] = c[i]; i++; }
      cmdline[i] = 0;
    }
  }
  u32 rate = param("rate", 1000), share = param("share", 50), seed = param("seed", 1);
  u32 tsc_khz = param("tsc_khz", 0);
  u32 stall = param("stall", tsc_khz ? tsc_khz : 2000000u);
  if (share < 1) share = 1;
  if (share > 100) share = 100;
  u32 avail = ram_top > DATA_START ? (ram_top - DATA_START) / PAGE : 0;
  u32 npages = (u32)udiv64((u64)avail * share, 100);
  if (npages == 0) npages = avail ? 1 : 0;
  u32 first_pfn = DATA_START / PAGE;
  /* Without a TSC frequency a rate cannot be kept: write as fast as possible. */
  u64 tpp = rate && tsc_khz ? udiv64((u64)tsc_khz * 1000u, rate) : 0;
  u64 catchup = tsc_khz ? (u64)tsc_khz * 100u : 0; /* never burst for more than 100 ms of lag */

  volatile u32 *hb = (volatile u32 *)(unsigned long)HB_ADDR;
  for (u32 i = 0; i < PAGE / 4; i++) hb[i] = 0;
  u64 boot = rdtsc();
  hb[HB_VERSION] = 2; hb[HB_FIRST_PFN] = first_pfn; hb[HB_NPAGES] = npages;
  hb[HB_RATE] = rate; hb[HB_SHARE] = share; hb[HB_SEED] = seed; hb[HB_TSC_KHZ] = tsc_khz;
  hb[HB_STALL_THRESHOLD] = stall; hb[HB_RAM_TOP] = ram_top;
  hb[HB_WIN_SHIFT] = WIN_SHIFT; hb[HB_WIN_SLOTS] = WIN_SLOTS;
  hb[HB_BOOT_TSC_LO] = (u32)boot; hb[HB_BOOT_TSC_HI] = (u32)(boot >> 32);
  hb[HB_MAGIC_W] = HB_MAGIC;
  if (npages == 0) for (;;) __asm__ volatile("pause"); /* no hlt in ring 3 */

  u32 s = 0, pos = 0, gen = 1, counter = 0, stalls = 0;
  u64 prev = boot, next = boot, stalled = 0, maxgap = 0;
  for (;;) {
    u64 now = rdtsc();
    u64 gap = now - prev;
    prev = now;
    if (gap > stall) {
      stalled += gap; stalls++;
      /* The longest stall per window of the TSC (the one the stall ended in), so that a reader
       * can find the longest single stop between two of its samples. A slot of an older window
       * is cleared before it is reused: a reader sees it empty, never mixed. */
      u32 win = (u32)(now >> WIN_SHIFT);
      volatile u32 *e = hb + HB_WIN + (win % WIN_SLOTS) * 4;
      if (e[0] != win || e[1] == 0) { e[1] = 0; e[2] = 0; e[3] = 0; e[0] = win; }
      u64 longest = ((u64)e[3] << 32) | e[2];
      if (gap > longest) { e[2] = 0; e[3] = (u32)(gap >> 32); e[2] = (u32)gap; }
      e[1] = e[1] + 1;
    }
    if (gap > maxgap) maxgap = gap;
    hb[HB_TSC_LO] = (u32)now; hb[HB_TSC_HI] = (u32)(now >> 32);
    hb[HB_STALL_LO] = (u32)stalled; hb[HB_STALL_HI] = (u32)(stalled >> 32);
    hb[HB_MAXGAP_LO] = (u32)maxgap; hb[HB_MAXGAP_HI] = (u32)(maxgap >> 32);
    hb[HB_STALL_COUNT] = stalls;
    hb[HB_COUNTER] = ++counter;
    if (tpp == 0 || (i64)(now - next) >= 0) {
      hb[HB_CURSOR] = s;
      write_page(first_pfn + pos, gen, seed);
      s++;
      if (++pos == npages) { pos = 0; gen++; }
      if (tpp) {
        next += tpp;
        if ((i64)(now - next) > (i64)catchup) next = now;
      }
    }
  }
}
