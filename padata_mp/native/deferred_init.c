/*
 * Deferred struct-page init in C, the same work as padata_mp.mm.pages and padata_mp.mm.init_chunk on
 * the same shared memory: the same struct page layout, free rules, per-section records and chunking.
 * Built two ways (padata_mp.native):
 *
 * - a shared library, loaded with ctypes:
 *     padata_init_chunk()     deferred init's thread_fn for the engine (the C kernel: holes skipped);
 *     padata_device_chunk()   pmem's memmap_init_zone_device for a chunk of a device's pages;
 *     padata_store_best_ns()  the store ceiling: pthreads storing over a block, plain or non-temporal;
 *     padata_stream_width()   the width of the non-temporal stores used here (0: none);
 *     padata_self_test()      0 when this build writes what it should (checked before it is cached).
 * - with -DDEFERRED_INIT_MAIN, the native reference program: every node's job at once on pthreads
 *   claiming chunks from a shared cursor under a mutex, as padata_mt_helper does.
 *     usage: deferred_init [--stream] MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...
 *       JOB = node:zone:start:end:zone_end:threads:chunk_size   (all jobs run at once)
 *     prints: "job NODE NS" per job, then "total NS".  Holes are not supported there: the
 *     benchmark's machines have none.  deferred_init --self-test: exit 0 when the build is sound.
 * The Python side splices the records into the free lists and verifies.
 *
 * Two ways to store the same words:
 * - plain (the kernel's way): cached stores, each page initialised, then its head marked and the
 *   heads linked, re-reading lines just written.  The CPU reads every line before it writes it
 *   (read-for-ownership): half of the traffic is reads of bytes that are thrown away.
 * - streaming: each section's heads are found first (pfns only), then every page is written once,
 *   with its final words (a head's order, counts and list links included), by non-temporal stores
 *   of the widest kind the CPU has (64 bytes with AVX-512, 32 with AVX2, else 8), which skip the
 *   read.  Nothing re-reads a
 *   streamed line in the kernel; one store fence ends each call (see padata_init_chunk).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define SECTION 32768L
#define PAGEBLOCK 512L
#define MAX_ORDER 10
#define PIECE (1L << MAX_ORDER)
#define NR_ORDERS 11
#define MIGRATE_MOVABLE 1
#define VMEMMAP_BASE 0xffffea0000000000UL
#define LRU(pfn) (VMEMMAP_BASE + (uint64_t)(pfn) * 64 + 8)
#define COUNTS(mapcount, refcount) (((uint64_t)(uint32_t)(refcount) << 32) | (uint32_t)(mapcount))
#define BUDDY_COUNTS COUNTS(-1 & ~0x80, 0)

struct page { uint64_t w[8]; };

/*
 * The stores, one cache line (a struct page) at a time.  Each kind is compiled for its own target
 * (no -march needed) and chosen at run time; a line is 64-byte aligned (the memmap is mapped).
 */
#define PLAIN_LINE(p, a, b, c, d, e, f, g, h) \
	do { uint64_t *q_ = (uint64_t *)(p); q_[0] = a; q_[1] = b; q_[2] = c; q_[3] = d; \
	     q_[4] = e; q_[5] = f; q_[6] = g; q_[7] = h; } while (0)
#if defined(__x86_64__)
#define STREAM64_LINE(p, a, b, c, d, e, f, g, h) \
	_mm512_stream_si512((void *)(p), _mm512_set_epi64(h, g, f, e, d, c, b, a))
#define STREAM32_LINE(p, a, b, c, d, e, f, g, h) \
	do { _mm256_stream_si256((__m256i *)(p), _mm256_set_epi64x(d, c, b, a)); \
	     _mm256_stream_si256((__m256i *)(p) + 1, _mm256_set_epi64x(h, g, f, e)); } while (0)
#define STREAM8_LINE(p, a, b, c, d, e, f, g, h) \
	do { long long *q_ = (long long *)(p); _mm_stream_si64(q_, a); _mm_stream_si64(q_ + 1, b); \
	     _mm_stream_si64(q_ + 2, c); _mm_stream_si64(q_ + 3, d); _mm_stream_si64(q_ + 4, e); \
	     _mm_stream_si64(q_ + 5, f); _mm_stream_si64(q_ + 6, g); _mm_stream_si64(q_ + 7, h); } while (0)
#endif

/*
 * One way of storing: `run` writes pages [pfn, pfn + n) that differ only in their self-pointing
 * lru words (w[1] and w[2] are ignored); `repeat` writes the same 64 bytes to n lines.
 */
struct stores_of {
	int width; /* bytes a store: 64, 32, 8; 0 for plain stores */
	void (*run)(struct page *memmap, long pfn, long n, const uint64_t w[8]);
	void (*repeat)(struct page *lines, long n, const uint64_t w[8]);
};

/* `repeat`, for each kind: the line's words are loop invariants, made once. */
#define DEFINE_REPEAT(kind, attr, LINE)                                                                \
	attr static void repeat_##kind(struct page *lines, long n, const uint64_t w[8])               \
	{                                                                                              \
		for (long i = 0; i < n; i++)                                                           \
			LINE(&lines[i], w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]);               \
	}

/*
 * `run`, for each kind: the page is kept in registers and only its two lru words move on, by 64
 * (a struct page) a page, so a page costs an add and its stores, as few instructions as the
 * ceiling's own loop: with two threads on one core the instructions would otherwise be the limit.
 */
static void run_plain(struct page *memmap, long pfn, long n, const uint64_t w[8])
{
	uint64_t lru = LRU(pfn);
	for (struct page *p = &memmap[pfn], *end = p + n; p < end; p++, lru += 64)
		PLAIN_LINE(p, w[0], lru, lru, w[3], w[4], w[5], w[6], w[7]);
}
DEFINE_REPEAT(plain, , PLAIN_LINE)
static const struct stores_of PLAIN = {0, run_plain, repeat_plain};

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void run_stream64(struct page *memmap, long pfn, long n,
							     const uint64_t w[8])
{
	__m512i line = _mm512_set_epi64(w[7], w[6], w[5], w[4], w[3], LRU(pfn), LRU(pfn), w[0]);
	const __m512i step = _mm512_set_epi64(0, 0, 0, 0, 0, 64, 64, 0);
	for (struct page *p = &memmap[pfn], *end = p + n; p < end; p++) {
		_mm512_stream_si512((void *)p, line);
		line = _mm512_add_epi64(line, step);
	}
}

__attribute__((target("avx2"))) static void run_stream32(struct page *memmap, long pfn, long n,
							  const uint64_t w[8])
{
	__m256i low = _mm256_set_epi64x(w[3], LRU(pfn), LRU(pfn), w[0]);
	const __m256i high = _mm256_set_epi64x(w[7], w[6], w[5], w[4]), step = _mm256_set_epi64x(0, 64, 64, 0);
	for (struct page *p = &memmap[pfn], *end = p + n; p < end; p++) {
		_mm256_stream_si256((__m256i *)p, low);
		_mm256_stream_si256((__m256i *)p + 1, high);
		low = _mm256_add_epi64(low, step);
	}
}

static void run_stream8(struct page *memmap, long pfn, long n, const uint64_t w[8])
{
	uint64_t lru = LRU(pfn);
	for (struct page *p = &memmap[pfn], *end = p + n; p < end; p++, lru += 64)
		STREAM8_LINE(p, w[0], lru, lru, w[3], w[4], w[5], w[6], w[7]);
}

DEFINE_REPEAT(stream64, __attribute__((target("avx512f"))), STREAM64_LINE)
DEFINE_REPEAT(stream32, __attribute__((target("avx2"))), STREAM32_LINE)
DEFINE_REPEAT(stream8, , STREAM8_LINE)
#endif

/* The widest non-temporal stores this CPU has for lines at `base`; plain where it has none. */
static struct stores_of streaming(const void *base)
{
#if defined(__x86_64__)
	if ((uintptr_t)base % 64 == 0) {
		if (__builtin_cpu_supports("avx512f"))
			return (struct stores_of){64, run_stream64, repeat_stream64};
		if (__builtin_cpu_supports("avx2"))
			return (struct stores_of){32, run_stream32, repeat_stream32};
	}
	return (struct stores_of){8, run_stream8, repeat_stream8};
#else
	(void)base;
	return PLAIN;
#endif
}

/* The store fence that orders streamed lines before anything after it (another thread's reads). */
static void drain(const struct stores_of *s)
{
#if defined(__x86_64__)
	if (s->width)
		_mm_sfence();
#else
	(void)s;
#endif
}

/* Where one call works: the machine's blocks, the flags of its node and zone, how it stores. */
struct target {
	struct page *memmap;
	uint8_t *pageblocks;
	int64_t *records; /* [section][order][first, last, count] */
	uint64_t flags;
	const struct stores_of *streaming; /* NULL: the kernel's way, plain stores */
};

/* One section's work: the section less its holes, then the heads it frees, in pfn order. */
struct heads {
	long nsegments, n10, n0;
	long segments[SECTION + 2]; /* [lo, hi) pairs */
	long order10[SECTION / PIECE], order0[SECTION];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000UL + ts.tv_nsec;
}

/* [start, end) less the holes (sorted [lo, hi) pairs; any outside it, or empty, are ignored). */
static void find_segments(long start, long end, const int64_t *holes, long nholes, struct heads *h)
{
	long at = start;
	h->nsegments = 0;
	for (long i = 0; i < nholes && at < end; i++) {
		long lo = holes[2 * i], hi = holes[2 * i + 1];
		if (hi <= at || lo >= end || lo >= hi)
			continue;
		if (lo > at) {
			h->segments[2 * h->nsegments] = at;
			h->segments[2 * h->nsegments++ + 1] = lo;
		}
		at = hi;
	}
	if (at < end) {
		h->segments[2 * h->nsegments] = at;
		h->segments[2 * h->nsegments++ + 1] = end;
	}
}

/*
 * What the segments free, without writing a struct page: whole, aligned pieces as order-10 blocks,
 * the rest one by one as order 0; the heads listed in pfn order and their pageblocks marked.
 */
static void collect_heads(const struct target *t, struct heads *h)
{
	h->n10 = h->n0 = 0;
	for (long s = 0; s < h->nsegments; s++) {
		long lo = h->segments[2 * s], hi = h->segments[2 * s + 1];
		long full_lo = (lo + PIECE - 1) / PIECE * PIECE, full_hi = hi / PIECE * PIECE;
		if (full_lo >= full_hi)
			full_lo = full_hi = hi;
		for (long pfn = lo; pfn < full_lo; pfn++)
			h->order0[h->n0++] = pfn;
		for (long piece = full_lo; piece < full_hi; piece += PIECE) {
			memset(&t->pageblocks[piece / PAGEBLOCK], MIGRATE_MOVABLE, PIECE / PAGEBLOCK);
			h->order10[h->n10++] = piece;
		}
		for (long pfn = full_hi; pfn < hi; pfn++)
			h->order0[h->n0++] = pfn;
	}
	for (long i = 0; i < h->n0; i++)
		if (h->order0[i] % PAGEBLOCK == 0)
			t->pageblocks[h->order0[i] / PAGEBLOCK] = MIGRATE_MOVABLE;
}

static void init_page(struct page *p, long pfn, uint64_t flags, uint64_t counts)
{
	p->w[0] = flags;
	p->w[1] = p->w[2] = LRU(pfn);
	p->w[3] = p->w[4] = p->w[5] = 0;
	p->w[6] = counts;
	p->w[7] = 0;
}

/* The kernel's way: every page initialised, then each head marked and linked to the next. */
static void write_plain(const struct target *t, const struct heads *h)
{
	for (long i = 0; i < h->n10; i++) {
		long piece = h->order10[i];
		/* __init_single_page's refcount 1 and __free_pages_core's 0 in one store. */
		for (long pfn = piece; pfn < piece + PIECE; pfn++)
			init_page(&t->memmap[pfn], pfn, t->flags, COUNTS(-1, 0));
		t->memmap[piece].w[6] = BUDDY_COUNTS;
		t->memmap[piece].w[5] = MAX_ORDER;
	}
	for (long i = 0; i < h->n0; i++)
		init_page(&t->memmap[h->order0[i]], h->order0[i], t->flags, BUDDY_COUNTS);
	const long *lists[2] = {h->order10, h->order0};
	long counts[2] = {h->n10, h->n0};
	for (int l = 0; l < 2; l++)
		for (long i = 0; i + 1 < counts[l]; i++) {
			t->memmap[lists[l][i]].w[1] = LRU(lists[l][i + 1]);
			t->memmap[lists[l][i + 1]].w[2] = LRU(lists[l][i]);
		}
}

/*
 * Streamed: each head written once with its order, counts and links (its list's ends point at
 * themselves, as the kernel's way leaves them), a piece's other 1023 pages after it.
 */
static void stream_list(const struct target *t, const long *heads, long n, long order)
{
	const struct stores_of *s = t->streaming;
	uint64_t body[8] = {t->flags, 0, 0, 0, 0, 0, COUNTS(-1, 0), 0};
	for (long i = 0; i < n; i++) {
		long pfn = heads[i];
		uint64_t head[8] = {t->flags, LRU(i + 1 < n ? heads[i + 1] : pfn), LRU(i ? heads[i - 1] : pfn),
				    0, 0, (uint64_t)order, BUDDY_COUNTS, 0};
		s->repeat(&t->memmap[pfn], 1, head);
		if (order)
			s->run(t->memmap, pfn + 1, (1L << order) - 1, body);
	}
}

static void record_list(const long *heads, long n, int64_t *record)
{
	record[0] = n ? heads[0] : 0;
	record[1] = n ? heads[n - 1] : 0;
	record[2] = n;
}

/* One section [start, end), less the holes: its pages written and freed, then its record. */
static void init_section(const struct target *t, long start, long end, const int64_t *holes, long nholes,
			 struct heads *h)
{
	find_segments(start, end, holes, nholes, h);
	collect_heads(t, h);
	if (t->streaming) {
		stream_list(t, h->order10, h->n10, MAX_ORDER);
		stream_list(t, h->order0, h->n0, 0);
	} else {
		write_plain(t, h);
	}
	int64_t *record = &t->records[(start / SECTION) * NR_ORDERS * 3];
	memset(record, 0, NR_ORDERS * 3 * sizeof(*record));
	record_list(h->order10, h->n10, &record[MAX_ORDER * 3]);
	record_list(h->order0, h->n0, &record[0]);
}

static void init_chunk(const struct target *t, long start, long end, long end_pfn, const int64_t *holes,
		       long nholes, struct heads *h)
{
	if (end > end_pfn)
		end = end_pfn;
	for (long s = start; s < end; s += SECTION)
		init_section(t, s, s + SECTION < end ? s + SECTION : end, holes, nholes, h);
}

/*
 * The C kernel: deferred init of [start, end) (whole sections; end clipped to the zone's end_pfn),
 * the holes skipped, in a memmap of `npages` struct pages; `stream` picks non-temporal stores.
 * Returns 0, or -22 (EINVAL) for a range that is not whole sections or not inside the memmap, or
 * -12 (ENOMEM).
 */
int padata_init_chunk(uint64_t *memmap, long npages, uint8_t *pageblocks, int64_t *records, long start,
		      long end, long end_pfn, uint64_t flags, const int64_t *holes, long nholes, int stream)
{
	if (start < 0 || end < start || end_pfn < 0 || end_pfn > npages || nholes < 0)
		return -22;
	if (start % SECTION || (end % SECTION && end < end_pfn))
		return -22;
	struct heads *h = malloc(sizeof(*h));
	if (!h)
		return -12;
	struct stores_of streaming_stores = streaming(memmap);
	struct target t = {(struct page *)memmap, pageblocks, records, flags, stream ? &streaming_stores : NULL};
	init_chunk(&t, start, end, end_pfn, holes, nholes, h);
	free(h);
	/*
	 * The fence: streamed lines may still sit in write-combining buffers.  The coordinator learns
	 * of this chunk only after we return (the reply), and only then does the splice read the first
	 * and last heads back; one sfence here orders every line streamed by this call before that.
	 */
	drain(&streaming_stores);
	return 0;
}

/*
 * pmem's memmap_init_zone_device for the device's pages [lo, hi) (indices into its memmap of
 * `npages`): every struct page the same 64 `words`, every pageblock MOVABLE.  Returns 0, or -22
 * for a range outside the memmap.
 */
int padata_device_chunk(uint64_t *memmap, long npages, uint8_t *pageblocks, long lo, long hi,
			const uint64_t *words, int stream)
{
	if (lo < 0 || hi < lo || hi > npages)
		return -22;
	struct stores_of s = stream ? streaming(memmap) : PLAIN;
	s.repeat((struct page *)memmap + lo, hi - lo, words);
	if (hi > lo)
		memset(&pageblocks[lo / PAGEBLOCK], MIGRATE_MOVABLE, (hi + PAGEBLOCK - 1) / PAGEBLOCK - lo / PAGEBLOCK);
	drain(&s); /* as padata_init_chunk's: before the reply */
	return 0;
}

/* The bytes of each non-temporal store this build uses on this CPU; 0 where it has none. */
int padata_stream_width(void)
{
	static const char probe[64] __attribute__((aligned(64))) = {0};
	return streaming(probe).width;
}

/*
 * 0 when this build writes what it should: two sections with holes, both ways, give the same
 * words, and the first single and the first piece's head are what the kernel leaves.  Checked on
 * every build before it is cached.
 */
int padata_self_test(void)
{
	enum { PAGES = 2 * SECTION, BLOCKS = PAGES / PAGEBLOCK, RECORDS = 2 * NR_ORDERS * 3 };
	const int64_t holes[] = {100, 2000, SECTION + 5, SECTION + 9};
	struct page *m[2] = {aligned_alloc(64, PAGES * 64), aligned_alloc(64, PAGES * 64)};
	uint8_t blocks[2][BLOCKS];
	int64_t records[2][RECORDS];
	int bad = !m[0] || !m[1];
	for (int way = 0; way < 2 && !bad; way++) {
		memset(m[way], 0xff, PAGES * 64);
		memset(blocks[way], 0xff, BLOCKS);
		bad |= padata_init_chunk((uint64_t *)m[way], PAGES, blocks[way], records[way], 0, PAGES, PAGES, 7,
					 holes, 2, way);
	}
	if (!bad) {
		bad |= memcmp(m[0], m[1], PAGES * 64) || memcmp(blocks[0], blocks[1], BLOCKS) ||
		       memcmp(records[0], records[1], sizeof(records[0]));
		bad |= m[1][0].w[1] != LRU(1) || m[1][0].w[6] != BUDDY_COUNTS || m[1][2048].w[5] != MAX_ORDER ||
		       m[1][2049].w[6] != COUNTS(-1, 0) || m[1][2049].w[1] != LRU(2049);
		const uint64_t words[8] = {1, 2, 3, 4, 5, 6, 7, 8};
		bad |= padata_device_chunk((uint64_t *)m[1], PAGES, blocks[1], 3, 999, words, 1) ||
		       m[1][998].w[7] != 8 || m[1][999].w[7] == 8;
	}
	free(m[0]);
	free(m[1]);
	return bad;
}

/* -- the store ceiling ------------------------------------------------------------------------ */

struct stores {
	struct page *lines;
	long count;
	const struct stores_of *how;
};

static void *store(void *arg)
{
	struct stores *s = arg;
	const uint64_t v = 0x5a5a5a5a5a5a5a5aUL; /* never zeros: memset has a faster path for them */
	const uint64_t words[8] = {v, v, v, v, v, v, v, v};
	s->how->repeat(s->lines, s->count, words);
	drain(s->how);
	return NULL;
}

/*
 * STREAM's habit: the best of `repeat` runs of `threads` pthreads each storing a non-zero value over
 * its share of the block's whole 64-byte lines (the block already mapped and faulted in); plain
 * stores, or the widest non-temporal ones the CPU has.  Returns the best run's nanoseconds, or 0
 * where threads could not be made.
 */
uint64_t padata_store_best_ns(void *block, size_t bytes, int threads, int nontemporal, int repeat)
{
	pthread_t *tids = calloc(threads, sizeof(*tids));
	struct stores *parts = calloc(threads, sizeof(*parts));
	struct stores_of how = nontemporal ? streaming(block) : PLAIN;
	long lines = bytes / 64, share = (lines + threads - 1) / threads;
	uint64_t best = 0;
	if (!tids || !parts)
		goto out;
	for (int i = 0; i < threads; i++) {
		long first = share * i < lines ? share * i : lines;
		long last = first + share < lines ? first + share : lines;
		parts[i] = (struct stores){(struct page *)block + first, last - first, &how};
	}
	for (int r = 0; r < repeat; r++) {
		uint64_t began = now_ns();
		int made = 0;
		while (made < threads && pthread_create(&tids[made], NULL, store, &parts[made]) == 0)
			made++;
		for (int i = 0; i < made; i++)
			pthread_join(tids[i], NULL);
		uint64_t ns = now_ns() - began;
		if (made < threads) {
			best = 0;
			goto out;
		}
		if (!best || ns < best)
			best = ns;
	}
out:
	free(tids);
	free(parts);
	return best;
}

#ifdef DEFERRED_INIT_MAIN
/* -- the native reference program -------------------------------------------------------------- */

#define NODES_PGSHIFT (64 - 10)
#define ZONES_PGSHIFT (NODES_PGSHIFT - 3)
#define LAST_CPUPID_PGSHIFT (ZONES_PGSHIFT - 21)
#define LAST_CPUPID_MASK ((1UL << 21) - 1)

struct job {
	struct target target;
	int node, threads;
	long start, size, zone_end, chunk_size;
	pthread_mutex_t lock;
	uint64_t ns;
};

static void *map(const char *path)
{
	int fd = open(path, O_RDWR);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) { perror(path); exit(1); }
	void *p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); exit(1); }
	close(fd);
	return p;
}

/* padata_mt_helper: claim the next chunk under the lock; each ends on a chunk_size multiple. */
static void *helper(void *arg)
{
	struct job *job = arg;
	struct heads *h = malloc(sizeof(*h));
	for (;;) {
		pthread_mutex_lock(&job->lock);
		if (job->size == 0) { pthread_mutex_unlock(&job->lock); break; }
		long s = job->start;
		long n = ((s / job->chunk_size) + 1) * job->chunk_size - s;
		if (n > job->size) n = job->size;
		job->start += n;
		job->size -= n;
		pthread_mutex_unlock(&job->lock);
		init_chunk(&job->target, s, s + n, job->zone_end, NULL, 0, h);
	}
	free(h);
	if (job->target.streaming)
		drain(job->target.streaming); /* before the join that ends the timing */
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--self-test") == 0)
		return padata_self_test() ? 1 : 0;
	int stream = argc > 1 && strcmp(argv[1], "--stream") == 0;
	argc -= stream;
	argv += stream;
	if (argc < 6) {
		fprintf(stderr, "usage: %s [--stream] MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...\n", argv[0]);
		return 2;
	}
	struct target machine = {map(argv[1]), map(argv[2]), map(argv[3]), 0, NULL};
	struct stores_of streaming_stores = streaming(machine.memmap);
	if (stream)
		machine.streaming = &streaming_stores;
	int njobs = argc - 5, total_threads = 0;
	struct job *jobs = calloc(njobs, sizeof(*jobs));
	for (int j = 0; j < njobs; j++) {
		struct job *job = &jobs[j];
		int zone;
		long end;
		if (sscanf(argv[5 + j], "%d:%d:%ld:%ld:%ld:%d:%ld", &job->node, &zone, &job->start, &end,
			   &job->zone_end, &job->threads, &job->chunk_size) != 7 || job->threads < 1 || job->chunk_size < 1) {
			fprintf(stderr, "bad job %s\n", argv[5 + j]);
			return 2;
		}
		job->size = end - job->start;
		job->target = machine;
		job->target.flags = ((uint64_t)job->node << NODES_PGSHIFT) | ((uint64_t)zone << ZONES_PGSHIFT) |
				    (LAST_CPUPID_MASK << LAST_CPUPID_PGSHIFT);
		pthread_mutex_init(&job->lock, NULL);
		total_threads += job->threads;
	}
	pthread_t *tids = calloc(total_threads, sizeof(*tids));
	uint64_t began = now_ns();
	int t = 0;
	for (int j = 0; j < njobs; j++)
		for (int i = 0; i < jobs[j].threads; i++)
			pthread_create(&tids[t++], NULL, helper, &jobs[j]);
	t = 0;
	for (int j = 0; j < njobs; j++) {
		for (int i = 0; i < jobs[j].threads; i++)
			pthread_join(tids[t++], NULL);
		jobs[j].ns = now_ns() - began;
	}
	uint64_t total = now_ns() - began;
	for (int j = 0; j < njobs; j++)
		printf("job %d %lu\n", jobs[j].node, (unsigned long)jobs[j].ns);
	printf("total %lu\n", (unsigned long)total);
	return 0;
}
#endif
